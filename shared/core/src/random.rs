//! Randomness from the operating system, for keys, nonces and tokens.
//!
//! Everything secret is drawn from the OS generator (`getrandom`) directly, not from a
//! user-space generator seeded by it. A failing OS generator is not recoverable: like
//! `rand`'s own `OsRng` before it, these panic.

use rand::distr::Alphanumeric;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use rand::{Rng, RngExt};

/// `N` random bytes.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    UnwrapErr(SysRng).fill_bytes(&mut out);
    out
}

/// `len` random characters from `[A-Za-z0-9]`.
pub fn base62(len: usize) -> String {
    UnwrapErr(SysRng)
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_differ_and_have_the_asked_shape() {
        assert_ne!(bytes::<16>(), bytes::<16>());
        let s = base62(40);
        assert_eq!(s.len(), 40);
        assert!(s.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(s, base62(40));
    }
}

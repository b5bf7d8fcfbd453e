"""Schemathesis hooks of `tests/tests/openapi.rs`: a check that every error answer of the
fnmesh API has the one error shape, `{"error": {"code": str, "message": str}}`."""

import schemathesis


@schemathesis.check
def error_body_shape(ctx, response, case):
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except Exception as e:  # noqa: BLE001 - any body that is not JSON fails the check
        raise AssertionError(
            f"{response.status_code} answer is not JSON: {response.text[:200]!r} ({e})"
        )
    if not (isinstance(body, dict) and list(body) == ["error"] and isinstance(body["error"], dict)):
        raise AssertionError(f"{response.status_code} answer is not {{\"error\":{{…}}}}: {body!r}")
    error = body["error"]
    if not (isinstance(error.get("code"), str) and error["code"]):
        raise AssertionError(f"error.code is not a non-empty string: {body!r}")
    if not isinstance(error.get("message"), str):
        raise AssertionError(f"error.message is not a string: {body!r}")
    return None

//! Nomad jobspecs read with an HCL parser (`hcl-rs`), as Nomad reads them: `variable` blocks
//! with their defaults and `-var` overrides, then one `job` block whose expressions are
//! evaluated with `var.*` and, for a task, the runtime variables of its allocation
//! (`NOMAD_PORT_<label>`, `NOMAD_ADDR_<label>`, `NOMAD_ALLOC_DIR`, …).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hcl::eval::{Context, Evaluate};
use hcl::{Block, Body, Value};

/// A parsed jobspec with its input variables resolved.
pub struct Jobspec {
    /// The file it came from.
    pub path: PathBuf,
    body: Body,
    vars: hcl::Map<String, Value>,
}

/// Evaluated attributes of one block.
pub type Attrs = BTreeMap<String, Value>;

impl Jobspec {
    /// Parses `path` and resolves its variables: defaults, then `overrides` (each must name a
    /// declared variable); a variable with neither is an error, as in `nomad job run`.
    pub fn load(path: &Path, overrides: &[(&str, Value)]) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let body = hcl::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut vars = hcl::Map::new();
        let mut declared = Vec::new();
        for block in body.blocks().filter(|b| b.identifier() == "variable") {
            let name = label(block, 0)?;
            declared.push(name.clone());
            if let Some(default) = block.body().attributes().find(|a| a.key() == "default") {
                let value = default
                    .expr()
                    .evaluate(&Context::new())
                    .map_err(|e| format!("variable {name}: {e}"))?;
                vars.insert(name, value);
            }
        }
        for (name, value) in overrides {
            if !declared.iter().any(|d| d == name) {
                return Err(format!("{}: no variable {name}", path.display()));
            }
            vars.insert((*name).to_owned(), value.clone());
        }
        if let Some(missing) = declared.iter().find(|d| !vars.contains_key(*d)) {
            return Err(format!(
                "{}: variable {missing} has no default and was not given",
                path.display()
            ));
        }
        Ok(Self {
            path: path.to_owned(),
            body,
            vars,
        })
    }

    /// The value of input variable `name`.
    pub fn var(&self, name: &str) -> Option<&Value> {
        self.vars.get(name)
    }

    /// The one `job` block.
    pub fn job(&self) -> Result<&Block, String> {
        let jobs: Vec<&Block> = self
            .body
            .blocks()
            .filter(|b| b.identifier() == "job")
            .collect();
        match jobs.as_slice() {
            [job] => Ok(job),
            _ => Err(format!(
                "{}: {} job blocks, not one",
                self.path.display(),
                jobs.len()
            )),
        }
    }

    /// The job's id (its label).
    pub fn job_id(&self) -> Result<String, String> {
        label(self.job()?, 0)
    }

    /// The job's own attributes (type, region, namespace, datacenters).
    pub fn job_attrs(&self) -> Result<Attrs, String> {
        attrs(self.job()?.body(), &self.context(&BTreeMap::new()))
    }

    /// Group `name`.
    pub fn group(&self, name: &str) -> Result<&Block, String> {
        blocks(self.job()?.body(), "group")
            .into_iter()
            .find(|g| label(g, 0).as_deref() == Ok(name))
            .ok_or_else(|| format!("{}: no group {name}", self.path.display()))
    }

    /// Every group's name.
    pub fn group_names(&self) -> Result<Vec<String>, String> {
        blocks(self.job()?.body(), "group")
            .into_iter()
            .map(|g| label(g, 0))
            .collect()
    }

    /// An evaluation context: `var.*` and the runtime variables `runtime`.
    pub fn context(&self, runtime: &BTreeMap<String, String>) -> Context<'static> {
        let mut ctx = Context::new();
        ctx.declare_var("var", Value::Object(self.vars.clone()));
        for (name, value) in runtime {
            ctx.declare_var(name.as_str(), Value::String(value.clone()));
        }
        ctx
    }
}

/// Label `i` of `block`.
pub fn label(block: &Block, i: usize) -> Result<String, String> {
    block
        .labels()
        .get(i)
        .map(|l| l.as_str().to_owned())
        .ok_or_else(|| format!("a {} block without label {i}", block.identifier()))
}

/// The blocks `identifier` directly in `body`.
pub fn blocks<'a>(body: &'a Body, identifier: &str) -> Vec<&'a Block> {
    body.blocks()
        .filter(|b| b.identifier() == identifier)
        .collect()
}

/// The one block `identifier` in `body`, if any.
pub fn block<'a>(body: &'a Body, identifier: &str) -> Option<&'a Block> {
    body.blocks().find(|b| b.identifier() == identifier)
}

/// `body`'s attributes, evaluated in `ctx`.
pub fn attrs(body: &Body, ctx: &Context<'_>) -> Result<Attrs, String> {
    body.attributes()
        .map(|a| {
            a.expr()
                .evaluate(ctx)
                .map(|v| (a.key().to_owned(), v))
                .map_err(|e| format!("attribute {}: {e}", a.key()))
        })
        .collect()
}

/// A value as the text Nomad gives a task (strings as they are, numbers and bools printed).
pub fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// A Nomad duration (`"25s"`, `"2m"`) in seconds.
pub fn duration_secs(value: &str) -> Result<u64, String> {
    let (number, unit) = value.split_at(value.trim_end_matches(char::is_alphabetic).len());
    let n: u64 = number.parse().map_err(|_| format!("duration {value:?}"))?;
    match unit {
        "s" => Ok(n),
        "m" => Ok(n * 60),
        "h" => Ok(n * 3600),
        _ => Err(format!("duration {value:?}: unit {unit:?}")),
    }
}

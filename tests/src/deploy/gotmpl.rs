//! The part of Nomad's `template` language (Go's `text/template` with consul-template's
//! functions) that fnmesh's jobspecs use, rendered against what a test put in place of Nomad:
//! its variables, its service registrations and the task's environment.
//!
//! Supported, and nothing else (anything else is an error naming it, so a jobspec cannot drift
//! to a form this renderer would get wrong): text; `{{ with nomadVar "PATH" }}…{{ end }}`
//! with `{{ .key }}` inside; `{{ range nomadService "NAME" }}…{{ end }}` with `{{ .Address }}`
//! and `{{ .Port }}` inside; `{{ env "NAME" }}`; the trim markers `{{-` and `-}}`. As in Nomad,
//! a variable that does not exist blocks the template (here: an error), while a service with no
//! registration renders its range empty.

use std::collections::BTreeMap;

/// A service registration: address and port.
pub type Registration = (String, u16);

/// What a template is rendered against.
pub struct Data<'a> {
    /// Nomad variables: path → items.
    pub variables: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// Service registrations by service name.
    pub services: &'a BTreeMap<String, Vec<Registration>>,
    /// The task's environment (`NOMAD_*` and its `env` block).
    pub env: &'a BTreeMap<String, String>,
}

#[derive(Debug)]
enum Node {
    Text(String),
    Env(String),
    Field(String),
    WithVar(String, Vec<Node>),
    RangeService(String, Vec<Node>),
}

/// The dot inside a block.
enum Dot<'a> {
    None,
    Var(&'a str, &'a BTreeMap<String, String>),
    Service(&'a Registration),
}

/// Renders `text`; the error names the unsupported action or the missing variable.
pub fn render(text: &str, data: &Data<'_>) -> Result<String, String> {
    let tokens = tokenize(text)?;
    let mut tokens = tokens.into_iter();
    let nodes = parse(&mut tokens, false)?;
    let mut out = String::new();
    emit(&nodes, data, &Dot::None, &mut out)?;
    Ok(out)
}

enum Token {
    Text(String),
    Action(String),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = text;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut before = rest[..start].to_owned();
        if trim_next {
            before = before.trim_start().to_owned();
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed action in {text:?}"))?;
        let mut action = &after[..end];
        if let Some(a) = action.strip_prefix('-') {
            before = before.trim_end().to_owned();
            action = a;
        }
        trim_next = false;
        if let Some(a) = action.strip_suffix('-') {
            trim_next = true;
            action = a;
        }
        tokens.push(Token::Text(before));
        tokens.push(Token::Action(action.trim().to_owned()));
        rest = &after[end + 2..];
    }
    let last = if trim_next { rest.trim_start() } else { rest };
    tokens.push(Token::Text(last.to_owned()));
    Ok(tokens)
}

/// `NAME "ARG"` → the argument, if the action is exactly that.
fn call<'a>(action: &'a str, name: &str) -> Option<&'a str> {
    let arg = action.strip_prefix(name)?.strip_prefix(' ')?.trim();
    arg.strip_prefix('"')?.strip_suffix('"')
}

fn parse(tokens: &mut impl Iterator<Item = Token>, in_block: bool) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::new();
    while let Some(token) = tokens.next() {
        let action = match token {
            Token::Text(text) => {
                nodes.push(Node::Text(text));
                continue;
            }
            Token::Action(action) => action,
        };
        if action == "end" {
            return if in_block {
                Ok(nodes)
            } else {
                Err("{{ end }} without a block".into())
            };
        }
        if let Some(rest) = action.strip_prefix("with ") {
            let path = call(rest.trim(), "nomadVar")
                .ok_or_else(|| format!("unsupported template action {{{{ {action} }}}}"))?;
            nodes.push(Node::WithVar(path.to_owned(), parse(tokens, true)?));
        } else if let Some(rest) = action.strip_prefix("range ") {
            let name = call(rest.trim(), "nomadService")
                .ok_or_else(|| format!("unsupported template action {{{{ {action} }}}}"))?;
            nodes.push(Node::RangeService(name.to_owned(), parse(tokens, true)?));
        } else if let Some(name) = call(&action, "env") {
            nodes.push(Node::Env(name.to_owned()));
        } else if let Some(field) = action.strip_prefix('.') {
            if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("unsupported template action {{{{ {action} }}}}"));
            }
            nodes.push(Node::Field(field.to_owned()));
        } else {
            return Err(format!("unsupported template action {{{{ {action} }}}}"));
        }
    }
    if in_block {
        Err("a block without {{ end }}".into())
    } else {
        Ok(nodes)
    }
}

fn emit(nodes: &[Node], data: &Data<'_>, dot: &Dot<'_>, out: &mut String) -> Result<(), String> {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Env(name) => out.push_str(
                data.env
                    .get(name)
                    .ok_or_else(|| format!("env {name:?} is not set in the task"))?,
            ),
            Node::Field(field) => match dot {
                Dot::Var(path, items) => out.push_str(
                    items
                        .get(field)
                        .ok_or_else(|| format!("variable {path} has no item {field:?}"))?,
                ),
                Dot::Service((address, port)) => match field.as_str() {
                    "Address" => out.push_str(address),
                    "Port" => out.push_str(&port.to_string()),
                    other => return Err(format!("a service has no field {other}")),
                },
                Dot::None => return Err(format!(".{field} outside a with or range block")),
            },
            Node::WithVar(path, body) => {
                let items = data.variables.get(path).ok_or_else(|| {
                    format!("Nomad variable {path} does not exist (the template would block)")
                })?;
                emit(body, data, &Dot::Var(path, items), out)?;
            }
            Node::RangeService(name, body) => {
                for registration in data.services.get(name).into_iter().flatten() {
                    emit(body, data, &Dot::Service(registration), out)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_supported_forms_and_refuses_others() {
        let variables = BTreeMap::from([(
            "nomad/jobs".to_owned(),
            BTreeMap::from([("k".to_owned(), "v".to_owned())]),
        )]);
        let services = BTreeMap::from([(
            "s".to_owned(),
            vec![("127.0.0.1".to_owned(), 1), ("127.0.0.2".to_owned(), 2)],
        )]);
        let env = BTreeMap::from([("E".to_owned(), "e".to_owned())]);
        let data = Data {
            variables: &variables,
            services: &services,
            env: &env,
        };
        let text = "a={{ with nomadVar \"nomad/jobs\" }}{{ .k }}{{ end }} [\n{{- range nomadService \"s\" }}\n  {{ .Address }}:{{ .Port }}\n{{- end }}\n] {{ env \"E\" }}";
        assert_eq!(
            render(text, &data).unwrap(),
            "a=v [\n  127.0.0.1:1\n  127.0.0.2:2\n] e"
        );
        assert!(render("{{ key \"x\" }}", &data).is_err());
        assert!(render("{{ with nomadVar \"nope\" }}{{ end }}", &data).is_err());
        assert_eq!(
            render("{{ range nomadService \"none\" }}x{{ end }}", &data).unwrap(),
            ""
        );
    }
}

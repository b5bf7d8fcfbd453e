//! Rendering: readable tables by default, JSON with `--json`.

use serde_json::Value;

/// Prints `rows` under `headers` as an aligned table: no borders, two spaces between
/// columns, as `docker ps` or `kubectl get` print.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    println!("{}", render_table(headers, rows));
}

fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(headers.iter().copied())
        .add_rows(rows.iter().map(|row| row.iter().map(String::as_str)));
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A JSON value as a short cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Pretty JSON.
pub fn json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// Key/value lines for one object.
pub fn record(v: &Value, fields: &[&str]) {
    for f in fields {
        let value = &v[*f];
        let text = match value {
            Value::Object(_) | Value::Array(_) => serde_json::to_string(value).unwrap_or_default(),
            other => cell(other),
        };
        println!("{:<14}{}", format!("{f}:"), text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_two_spaces_apart() {
        let rows = vec![
            vec!["hello".to_owned(), "3".to_owned()],
            vec!["a".to_owned(), "12".to_owned()],
        ];
        assert_eq!(
            render_table(&["NAME", "VERSION"], &rows),
            "NAME   VERSION\nhello  3\na      12"
        );
    }
}

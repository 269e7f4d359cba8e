//! Splits a migration file into top-level SQL statements, the way the Supabase CLI does.
//!
//! Pure string scanning: `;` ends a statement only outside quotes, quoted identifiers, comments
//! and dollar-quoted bodies. Comments before a statement stay with it; trailing `;` is removed.
//! Pieces made only of whitespace and comments are dropped.

/// The statements of `sql`, in order.
pub fn split_statements(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = find_from(bytes, i, b"\n").map_or(bytes.len(), |end| end + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = skip_block_comment(bytes, i),
            b'\'' => {
                let backslash_escapes = i > 0 && matches!(bytes[i - 1], b'E' | b'e');
                i = skip_quoted(bytes, i, b'\'', backslash_escapes);
            }
            b'"' => i = skip_quoted(bytes, i, b'"', false),
            b'$' => match dollar_tag(bytes, i) {
                Some(tag) => {
                    let body = i + tag.len();
                    i = find_from(bytes, body, tag).map_or(bytes.len(), |end| end + tag.len());
                }
                None => i += 1,
            },
            b';' => {
                push_statement(&mut statements, &sql[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    push_statement(&mut statements, &sql[start..]);
    statements
}

fn push_statement(statements: &mut Vec<String>, piece: &str) {
    let piece = piece.trim();
    if !is_only_comments(piece) {
        statements.push(piece.to_owned());
    }
}

fn is_only_comments(piece: &str) -> bool {
    piece.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with("--")
    }) && !piece.contains("/*")
}

fn find_from(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Block comments nest in PostgreSQL.
fn skip_block_comment(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i + 1 < bytes.len() {
        if bytes[i] == b'/' && bytes[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if bytes[i] == b'*' && bytes[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

/// Skips a quoted run starting at `start`; a doubled quote is an escaped quote.
fn skip_quoted(bytes: &[u8], start: usize, quote: u8, backslash_escapes: bool) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        if backslash_escapes && bytes[i] == b'\\' {
            i += 2;
        } else if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

/// `$$` or `$tag$` at `start`, where a tag is an identifier; `$1` (a parameter) is not a tag.
fn dollar_tag(bytes: &[u8], start: usize) -> Option<&[u8]> {
    if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
        return None;
    }
    let mut i = start + 1;
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
        i += 1;
    }
    let tag_is_identifier = i == start + 1 || !bytes[start + 1].is_ascii_digit();
    (bytes.get(i) == Some(&b'$') && tag_is_identifier).then(|| &bytes[start..=i])
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let sql = "create table a (x text default 'a;b');\n\
                   -- a comment; with a semicolon\n\
                   create function f() returns int language sql as $$ select 1; $$;\n\
                   create function g() returns int language plpgsql as $body$ begin return 2; end $body$;\n\
                   select \"odd;name\" from a; /* block; comment */ select E'it\\'s;';";
        let statements = split_statements(sql);
        assert_eq!(statements.len(), 5, "{statements:#?}");
        assert!(statements[1].starts_with("-- a comment"));
        assert!(statements[2].ends_with("$body$"));
        assert!(statements[4].starts_with("/* block; comment */ select E'it\\'s;'"));
    }

    #[test]
    fn a_file_of_comments_has_no_statements() {
        assert!(split_statements("-- nothing here;\n-- at all\n").is_empty());
    }

    #[test]
    fn positional_parameters_are_not_dollar_quotes() {
        let statements = split_statements("prepare p as select $1; select 2");
        assert_eq!(statements, vec!["prepare p as select $1", "select 2"]);
    }
}

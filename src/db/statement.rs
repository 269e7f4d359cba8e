//! Splits a migration file into statements exactly as the Supabase CLI does (`supabase db push`
//! records them in `supabase_migrations.schema_migrations.statements`), so either tool sees the
//! other's history as unchanged. Pure.
//!
//! The CLI's rules, which are its own and not PostgreSQL's lexer:
//! - a `;` ends a statement unless it is inside `'…'` or `"…"` (a doubled quote stays inside),
//!   a `--` comment (to the end of the line), a `/* */` comment (nested), a `$tag$` body, a
//!   parenthesis, or a `BEGIN ATOMIC … END` body (closed by the first `END`, in any case);
//! - outside those, `\` makes the next character ordinary (so `E'it\'s'` is *not* one string);
//! - the input is walked byte by byte, decoding a character at each byte, so a non-ASCII
//!   character continues a `$tag` only at its first byte;
//! - each piece keeps the comments and text before it; trailing `;` are removed, then
//!   surrounding whitespace; empty pieces are dropped, but a piece of only comments is kept
//!   (a file of comments is one statement, as is a comment after the last `;`).

/// The statements of `sql`, in order, as the Supabase CLI records them.
pub fn split_statements(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut state = State::Ready;
    let mut offset = 0;
    while start + offset < bytes.len() {
        let token = &bytes[start..];
        let (rune, width) = decode_at(token, offset);
        let data = &token[..offset + width];
        match state.next(rune, data) {
            Some(next) => {
                state = next;
                offset += 1;
            }
            None => {
                push(&mut statements, &sql[start..start + offset + width]);
                start += offset + width;
                offset = 0;
                state = State::Ready;
            }
        }
    }
    push(&mut statements, &sql[start..]);
    statements
}

fn push(statements: &mut Vec<String>, piece: &str) {
    let piece = piece.trim_end_matches(';').trim();
    if !piece.is_empty() {
        statements.push(piece.to_owned());
    }
}

/// The character starting at byte `at` and its width, or U+FFFD and 1 where no character starts
/// there (a continuation byte), like Go's `utf8.DecodeRune`.
fn decode_at(bytes: &[u8], at: usize) -> (char, usize) {
    let rest = &bytes[at..];
    let len = match rest[0] {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => return (char::REPLACEMENT_CHARACTER, 1),
    };
    match rest.get(..len).and_then(|b| std::str::from_utf8(b).ok()) {
        Some(s) => (s.chars().next().unwrap_or(char::REPLACEMENT_CHARACTER), len),
        None => (char::REPLACEMENT_CHARACTER, 1),
    }
}

/// The last character of `bytes`, if they end in a whole one.
fn last_char(bytes: &[u8]) -> Option<char> {
    (1..=4.min(bytes.len()))
        .find_map(|n| std::str::from_utf8(&bytes[bytes.len() - n..]).ok())
        .and_then(|s| s.chars().next_back())
}

fn is_identifier_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// `data` ends with `BEGIN <whitespace> ATOMIC`, each a whole word.
fn ends_with_begin_atomic(data: &[u8]) -> bool {
    let Some(offset) = data.len().checked_sub("ATOMIC".len()) else {
        return false;
    };
    if !data[offset..].eq_ignore_ascii_case(b"ATOMIC") {
        return false;
    }
    if offset > 0 && last_char(&data[..offset]).is_some_and(is_identifier_char) {
        return false;
    }
    let prefix = match std::str::from_utf8(&data[..offset]) {
        Ok(text) => text.trim_end().as_bytes(),
        Err(_) => return false,
    };
    let Some(offset) = prefix.len().checked_sub("BEGIN".len()) else {
        return false;
    };
    prefix[offset..].eq_ignore_ascii_case(b"BEGIN")
        && (offset == 0 || !last_char(&prefix[..offset]).is_some_and(is_identifier_char))
}

/// Where the scanner is; `next` returns `None` to end the statement at this character.
#[derive(Debug, Clone)]
enum State {
    Ready,
    /// One `-` seen.
    Dash,
    /// A `/` seen (depth 0), or inside `/* */` comments (depth ≥ 1).
    Block {
        depth: u32,
    },
    /// Inside `'…'` or `"…"`; `closing` after a quote that may be the first of a doubled one.
    Quote {
        delimiter: char,
        closing: bool,
    },
    /// Inside a body that only `delimiter` ends: a `$tag$` body, or a `--` comment (`\n`).
    Verbatim {
        delimiter: Vec<u8>,
    },
    /// A `$` seen at byte `offset`, maybe opening `$tag$`.
    Tag {
        offset: usize,
    },
    /// After `\`: the next character is ordinary.
    Escape,
    /// Inside `( … )` or `BEGIN ATOMIC … END`: `;` does not split until `delimiter`.
    Nested {
        inner: Box<State>,
        delimiter: &'static [u8],
    },
}

impl State {
    /// `data` is the statement so far, ending with the bytes of `c`.
    fn next(self, c: char, data: &[u8]) -> Option<State> {
        match self {
            State::Ready => Self::ready(c, data),
            State::Dash if c == '-' => Some(State::Verbatim {
                delimiter: b"\n".to_vec(),
            }),
            State::Dash => Self::ready(c, data),
            State::Block { depth } => {
                let window = &data[data.len().saturating_sub(2)..];
                if window == b"/*" {
                    Some(State::Block { depth: depth + 1 })
                } else if depth == 0 {
                    Self::ready(c, data)
                } else if window == b"*/" {
                    Some(if depth == 1 {
                        State::Ready
                    } else {
                        State::Block { depth: depth - 1 }
                    })
                } else {
                    Some(State::Block { depth })
                }
            }
            State::Quote {
                delimiter,
                closing: true,
            } if c != delimiter => Self::ready(c, data),
            State::Quote { delimiter, closing } => Some(State::Quote {
                delimiter,
                closing: !closing && c == delimiter,
            }),
            State::Verbatim { delimiter } => {
                if data.ends_with(&delimiter) {
                    Some(State::Ready)
                } else {
                    Some(State::Verbatim { delimiter })
                }
            }
            State::Tag { offset } if c == '$' => Some(State::Verbatim {
                delimiter: data[offset..].to_vec(),
            }),
            State::Tag { offset } if c.is_alphanumeric() || c == '_' => Some(State::Tag { offset }),
            State::Tag { .. } => Self::ready(c, data),
            State::Escape => Some(State::Ready),
            State::Nested { inner, delimiter } => {
                // A `;` that would end a statement only keeps the inner state as it was.
                let inner = match inner.clone().next(c, data) {
                    Some(next) => Box::new(next),
                    None => inner,
                };
                let closes = matches!(*inner, State::Ready)
                    && data.len() >= delimiter.len()
                    && data[data.len() - delimiter.len()..].eq_ignore_ascii_case(delimiter);
                Some(if closes {
                    State::Ready
                } else {
                    State::Nested { inner, delimiter }
                })
            }
        }
    }

    fn ready(c: char, data: &[u8]) -> Option<State> {
        Some(match c {
            '$' => State::Tag {
                offset: data.len() - c.len_utf8(),
            },
            '\'' | '"' => State::Quote {
                delimiter: c,
                closing: false,
            },
            '-' => State::Dash,
            '/' => State::Block { depth: 0 },
            '\\' => State::Escape,
            ';' => return None,
            '(' => State::Nested {
                inner: Box::new(State::Ready),
                delimiter: b")",
            },
            'c' | 'C' if ends_with_begin_atomic(data) => State::Nested {
                inner: Box::new(State::Ready),
                delimiter: b"END",
            },
            _ => State::Ready,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn splits_on_semicolons_outside_quotes_comments_and_bodies() {
        let sql = "create table a (x text default 'a;b', y text default 'it''s;');\n\
                   -- a comment; with a semicolon\n\
                   create function f() returns int language sql as $$ select 1; $$;\n\
                   create function g() returns int language plpgsql as $body$ begin return 2; end $body$;\n\
                   select \"odd;name\" from a; /* block; /* nested; */ comment */ select 3;";
        let statements = split_statements(sql);
        assert_eq!(statements.len(), 5, "{statements:#?}");
        assert!(statements[0].ends_with("'it''s;')"));
        assert!(statements[1].starts_with("-- a comment; with a semicolon\ncreate function f()"));
        assert!(statements[2].ends_with("$body$"));
        assert_eq!(statements[4], "/* block; /* nested; */ comment */ select 3");
    }

    #[test]
    fn comments_alone_are_a_statement_as_the_cli_records_them() {
        assert_eq!(
            split_statements("-- nothing here;\n-- at all\n"),
            vec!["-- nothing here;\n-- at all"]
        );
        assert_eq!(
            split_statements("select 1;\n-- the end\n"),
            vec!["select 1", "-- the end"]
        );
        assert!(split_statements("  \n;;\n").is_empty());
    }

    #[test]
    fn parentheses_and_begin_atomic_bodies_keep_their_semicolons() {
        let sql = "create rule r as on insert to t do also (delete from u; delete from v);\n\
                   create function h() returns int language sql begin atomic select 1; select 2; end;\n\
                   select 4";
        let statements = split_statements(sql);
        assert_eq!(statements.len(), 3, "{statements:#?}");
        assert!(statements[1].ends_with("select 2; end"));
        // The CLI's rule: an inner `)` also closes the outer parenthesis.
        assert_eq!(
            split_statements("do also (insert into u values (1); select 2); select 3").len(),
            3
        );
        // `atomic` as part of a longer word opens nothing.
        assert_eq!(split_statements("select nonatomic; select 5").len(), 2);
    }

    #[test]
    fn a_backslash_outside_quotes_escapes_and_inside_quotes_does_not() {
        // The CLI's rule, not PostgreSQL's: `E'it\'s;'` is cut after `it\'s`.
        assert_eq!(
            split_statements("select E'it\\'s;'; select 6"),
            vec!["select E'it\\'s", "'; select 6"]
        );
        assert_eq!(
            split_statements("select 1 \\; select 2"),
            vec!["select 1 \\; select 2"]
        );
    }

    #[test]
    fn positional_parameters_are_not_dollar_quotes() {
        let statements = split_statements("prepare p as select $1; select 2");
        assert_eq!(statements, vec!["prepare p as select $1", "select 2"]);
    }

    #[test]
    fn non_ascii_text_is_carried_through_whole() {
        let statements = split_statements("comment on table t is 'größe; ok'; select 'é'");
        assert_eq!(
            statements,
            vec!["comment on table t is 'größe; ok'", "select 'é'"]
        );
    }
}

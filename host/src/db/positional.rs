//! `$N` parameters rewritten as plain `?` for SQLite.
//!
//! Geohost writes one SQL text for both backends, with PostgreSQL's
//! numbered parameters (`$1`, `$2`, …). SQLite accepts them as *named*
//! parameters, and naming costs twice per parameter: SQLite's parser looks
//! each name up in a linear list while preparing, and sqlx-sqlite asks for
//! each parameter's name while binding (`sqlite3_bind_parameter_name`,
//! another walk of that list). A statement of N parameters therefore costs
//! O(N²): a 1,000-row verification result (3,000 parameters) took 85–97 ms
//! where SQLite's own work is 11–14 ms (45–64 ms with this rewrite), and
//! the multi-row statements go up to 30,000 parameters.
//!
//! Plain `?` parameters are numbered by position and never named, so both
//! walks go. [`rewrite`] replaces every `$N` outside literals, identifiers
//! and comments with `?` and lists the arguments in placeholder order (an
//! argument used twice is bound twice). The rewritten text depends only on
//! the original, so sqlx's statement cache keeps working.

use super::Arg;

/// Where the scanner is in a statement.
#[derive(Clone, Copy, PartialEq)]
enum Scan {
    Code,
    /// Inside `'…'` (a literal) or `"…"` (an identifier): the quote.
    Quoted(u8),
    LineComment,
    BlockComment,
}

/// `sql` with its `$N` parameters as `?`, and the arguments in placeholder
/// order; `None` when there is nothing to rewrite or the statement already
/// has `?` parameters of its own (then it is bound as written). A `$N`
/// past the arguments binds NULL, as SQLite does for an unbound parameter.
pub fn rewrite(sql: &str, args: &[Arg]) -> Option<(String, Vec<Arg>)> {
    if !sql.contains('$') {
        return None;
    }
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut ordered = Vec::with_capacity(args.len());
    let mut scan = Scan::Code;
    // Start of the text not yet copied to `out`.
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match scan {
            Scan::Quoted(q) if b == q => scan = Scan::Code,
            Scan::Quoted(_) => {}
            Scan::LineComment if b == b'\n' => scan = Scan::Code,
            Scan::LineComment => {}
            Scan::BlockComment if b == b'*' && bytes.get(i + 1) == Some(&b'/') => {
                scan = Scan::Code;
                i += 1;
            }
            Scan::BlockComment => {}
            Scan::Code => match b {
                b'\'' | b'"' => scan = Scan::Quoted(b),
                b'-' if bytes.get(i + 1) == Some(&b'-') => scan = Scan::LineComment,
                b'/' if bytes.get(i + 1) == Some(&b'*') => {
                    scan = Scan::BlockComment;
                    i += 1;
                }
                // A parameter of the statement's own: keep it as written.
                b'?' => return None,
                b'$' if !follows_name(bytes, i) => {
                    let digits = bytes[i + 1..]
                        .iter()
                        .take_while(|d| d.is_ascii_digit())
                        .count();
                    if digits > 0 {
                        let number: usize = sql[i + 1..i + 1 + digits].parse().ok()?;
                        out.push_str(&sql[copied..i]);
                        out.push('?');
                        ordered.push(match number.checked_sub(1).and_then(|n| args.get(n)) {
                            Some(arg) => arg.clone(),
                            None => Arg::Text(None),
                        });
                        i += digits;
                        copied = i + 1;
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    out.push_str(&sql[copied..]);
    Some((out, ordered))
}

/// Whether the byte before `i` continues a name (`a$1` is not a parameter).
fn follows_name(bytes: &[u8], i: usize) -> bool {
    i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(args: &[Arg]) -> Vec<Option<i64>> {
        args.iter()
            .map(|a| match a {
                Arg::I64(v) => *v,
                Arg::Text(None) => None,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn numbered_parameters_become_positional_in_use_order() {
        let args = [Arg::from(10i64), Arg::from(20i64), Arg::from(30i64)];
        let (sql, ordered) = rewrite(
            "UPDATE t SET a = $2 WHERE b = $1 AND c IN ($3, $1, $12)",
            &args,
        )
        .unwrap();
        assert_eq!(sql, "UPDATE t SET a = ? WHERE b = ? AND c IN (?, ?, ?)");
        assert_eq!(
            ints(&ordered),
            [Some(20), Some(10), Some(30), Some(10), None],
            "a reused parameter is bound again; one past the arguments is NULL"
        );
    }

    #[test]
    fn literals_identifiers_and_comments_are_left_alone() {
        let args = [Arg::from(1i64)];
        let sql = "SELECT json_extract(p, '$.a $1'), \"col$1\" -- $1 here\n\
                   FROM t /* $1 */ WHERE x$1 = 0 AND id = $1";
        let (out, ordered) = rewrite(sql, &args).unwrap();
        assert_eq!(
            out,
            "SELECT json_extract(p, '$.a $1'), \"col$1\" -- $1 here\n\
             FROM t /* $1 */ WHERE x$1 = 0 AND id = ?"
        );
        assert_eq!(ints(&ordered), [Some(1)]);
    }

    #[test]
    fn statements_without_numbered_parameters_are_bound_as_written() {
        assert!(rewrite("SELECT 1", &[]).is_none());
        assert!(rewrite("SELECT ? + $1", &[Arg::from(1i64)]).is_none());
        // A `$` that is not a parameter changes nothing but is harmless.
        let (sql, ordered) = rewrite("SELECT '$' || $", &[]).unwrap();
        assert_eq!(sql, "SELECT '$' || $");
        assert!(ordered.is_empty());
    }
}

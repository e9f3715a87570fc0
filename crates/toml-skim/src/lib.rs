//! What `mailman status` lexes of the configuration file (issue 19),
//! in a crate of its own so that it is built for speed (`opt-level = 3`)
//! while the rest of the binary is built for size: at 1,000 runners this
//! is most of the command's own CPU, and the loops here are generic code
//! (`Vec<Token>`, the parser's events) that the `toml_parser` crate's own
//! setting does not reach, since they are compiled where they are used.
//!
//! It builds nothing: the `toml` crate's lexer and parser (`toml_parser`)
//! check the syntax; [`mailman_part`] keeps the text of the parts that can
//! define the top-level `mailman` table, and [`tables_valid`] checks the
//! rest. What the text means is the caller's (`config::locate`).

use std::ops::Range;

use toml_parser::decoder::Encoding;
use toml_parser::{ErrorSink, ParseError, Raw, Source, Span};

/// Whether each of `tables` (ranges of `text`, each a run of whole tables
/// beginning a line outside any value, as [`mailman_part`] gives them) is
/// valid TOML syntax, keys and values included. A range is lexed on its
/// own, its tables parsed one by one, as [`mailman_part`] does.
pub fn tables_valid(text: &str, tables: &[Range<usize>]) -> bool {
    let mut tokens = Vec::new();
    tables
        .iter()
        .all(|range| check_tables(&text[range.clone()], &mut tokens).is_some())
}

/// Whether `text`, a run of whole tables, is valid TOML syntax: lexed
/// once, each table parsed alone (`tokens`: room for one table's tokens).
fn check_tables(text: &str, tokens: &mut Vec<toml_parser::lexer::Token>) -> Option<()> {
    let end = Source::new("").lex().last()?;
    let mut headers = Headers::default();
    tokens.clear();
    for token in Source::new(text).lex() {
        if headers.begins(token.kind()) && !tokens.is_empty() {
            tokens.push(end);
            parse_table(text, tokens)?;
            tokens.clear();
        }
        tokens.push(token);
    }
    // The lexer's own end-of-input token came last.
    parse_table(text, tokens).map(drop)
}

/// Where table headers begin in a document's tokens: at a `[` that starts
/// a line outside any value (strings are single tokens; arrays and inline
/// tables are counted open and closed).
#[derive(Default)]
struct Headers {
    depth: i32,
    mid_line: bool,
}

impl Headers {
    /// Whether a token of `kind`, the next one, begins a table header.
    fn begins(&mut self, kind: toml_parser::lexer::TokenKind) -> bool {
        use toml_parser::lexer::TokenKind;
        match kind {
            TokenKind::LeftSquareBracket if self.depth == 0 && !self.mid_line => {
                (self.depth, self.mid_line) = (1, true);
                return true;
            }
            TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => self.depth += 1,
            TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => self.depth -= 1,
            TokenKind::Newline => self.mid_line = false,
            TokenKind::Whitespace => {}
            _ => self.mid_line = true,
        }
        false
    }
}

/// The parts of a TOML document that can define its top-level `mailman`
/// table: what precedes the first table header (dotted keys and inline
/// tables), and each table whose header's first key is `mailman`, checked;
/// and where the other tables are, their syntax not checked beyond their
/// header (for [`tables_valid`]). `None` when what was checked is not
/// valid TOML syntax, keys and values included.
///
/// The document is lexed once, and only up to the first header past the
/// last `mailman` or backslash in the file: no header after that can name
/// `mailman`, and the tables from there on are one range. A table's
/// tokens are parsed on their own, so that a file of 1,000 tables
/// never holds all its tokens at once (144 KB of them: a third of
/// `status`'s page faults). A table header can only begin a line outside
/// any value ([`Headers`]), and the parser's state there is that of a
/// document's start: parsing the tables one by one finds the errors
/// parsing the whole would.
pub fn mailman_part(text: &str) -> Option<(String, Vec<Range<usize>>)> {
    use toml_parser::lexer::TokenKind;

    /// What is done with the table being lexed.
    #[derive(Clone, Copy, PartialEq)]
    enum Table {
        /// Read (the root, or a `mailman` table).
        Read,
        /// Its header line not yet over.
        Header,
        /// Left for [`tables_valid`].
        Rest,
    }

    // A table's end, for its parser: the lexer's end-of-input token (the
    // only one it makes), from an empty source.
    let end = Source::new("").lex().last()?;
    let mut kept = String::new();
    let mut rest = Vec::new();
    let mut close = |from: usize, to: usize, tokens: &mut Vec<_>, table: Table| {
        if table == Table::Rest {
            rest.push(from..to);
            return Some(());
        }
        tokens.push(end);
        // The root (before any header) has no first key, and is kept.
        if parse_table(text, tokens)?.is_none_or(|k| k == "mailman") {
            kept.push_str(&text[from..to]);
            kept.push('\n');
        }
        Some(())
    };
    // Past the last place a header could name `mailman`.
    let last_mention = [text.rfind("mailman"), text.rfind('\\')]
        .into_iter()
        .flatten()
        .max();
    let mut tokens = Vec::new();
    let mut table = Table::Read;
    let mut from = 0;
    let mut headers = Headers::default();
    for token in Source::new(text).lex() {
        if headers.begins(token.kind()) {
            let at = token.span().start();
            close(from, at, &mut tokens, table)?;
            tokens.clear();
            (from, table) = (at, Table::Header);
            if last_mention.is_none_or(|m| m < at) {
                // Every table from here on is left to [`tables_valid`], unlexed.
                table = Table::Rest;
                break;
            }
        } else if token.kind() == TokenKind::Newline && table == Table::Header {
            if may_name_mailman(&text[from..token.span().start()]) {
                // The header line, parsed alone, says whose table it is.
                tokens.extend([token, end]);
                let first = parse_table(text, &tokens)?;
                tokens.pop();
                table = if first.is_some_and(|k| k == "mailman") {
                    Table::Read
                } else {
                    Table::Rest
                };
            } else {
                // Left to [`tables_valid`], which checks its header too.
                tokens.clear();
                table = Table::Rest;
            }
            continue;
        }
        if table != Table::Rest {
            tokens.push(token);
        }
    }
    // The document's own end-of-input token was the last one lexed (and
    // is pushed again by `close` for a table read).
    if table != Table::Rest {
        tokens.pop();
    }
    close(from, text.len(), &mut tokens, table)?;
    Some((kept, rest))
}

/// Whether a table's header line can name `mailman` as its first key:
/// written bare, quoted, or with an escape in a basic string (`\u006d`).
/// Without the word or a backslash in it, it cannot: the header is then
/// left unparsed (its table's check parses it).
fn may_name_mailman(header: &str) -> bool {
    header.contains("mailman") || header.contains('\\')
}

/// Parses one table's `tokens` (lexed from `text`, its end-of-input token
/// last): its header's first key, decoded (`None` for the root); `None`
/// (the outer) on a syntax error.
fn parse_table<'s>(
    text: &'s str,
    tokens: &[toml_parser::lexer::Token],
) -> Option<Option<std::borrow::Cow<'s, str>>> {
    use toml_parser::parser::{RecursionGuard, ValidateWhitespace};
    /// The `toml` crate's own limit.
    const MAX_DEPTH: u32 = 80;
    let mut skim = Skim {
        text,
        header: false,
        first_key: None,
    };
    let mut error: Option<ParseError> = None;
    // As the `toml` crate reads: whitespace and comments checked, and
    // nesting bounded (the parser recurses into arrays and inline tables:
    // 200,000 of them overflowed the stack).
    let mut checked = ValidateWhitespace::new(&mut skim, Source::new(text));
    let mut bounded = RecursionGuard::new(&mut checked, MAX_DEPTH);
    toml_parser::parser::parse_document(tokens, &mut bounded, &mut error);
    error.is_none().then_some(skim.first_key)
}

/// One table's events: its header's first key, decoded; every key and
/// value decoded too, for their errors.
struct Skim<'s> {
    text: &'s str,
    /// A header was opened and its first key not seen yet.
    header: bool,
    first_key: Option<std::borrow::Cow<'s, str>>,
}

impl<'s> Skim<'s> {
    fn raw(&self, span: Span, encoding: Option<Encoding>) -> Raw<'s> {
        Raw::new_unchecked(&self.text[span.start()..span.end()], encoding, span)
    }
}

impl toml_parser::parser::EventReceiver for Skim<'_> {
    fn std_table_open(&mut self, _: Span, _: &mut dyn ErrorSink) {
        self.header = true;
    }
    fn array_table_open(&mut self, _: Span, _: &mut dyn ErrorSink) {
        self.header = true;
    }
    fn simple_key(&mut self, span: Span, kind: Option<Encoding>, error: &mut dyn ErrorSink) {
        let mut key = std::borrow::Cow::Borrowed("");
        self.raw(span, kind).decode_key(&mut key, error);
        if std::mem::take(&mut self.header) {
            self.first_key = Some(key);
        }
    }
    fn scalar(&mut self, span: Span, kind: Option<Encoding>, error: &mut dyn ErrorSink) {
        let _ = self.raw(span, kind).decode_scalar(&mut (), error);
    }
}

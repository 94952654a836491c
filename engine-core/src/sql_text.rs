//! SQL text that arrives in pieces (a dump streamed as a request body), cut into whole
//! statements by turso's own parser as soon as each one is complete, so that a dump of any
//! size is read in bounded memory.

use turso_parser::lexer::Lexer;
use turso_parser::parser::Parser;
use turso_parser::token::TokenType;

use crate::error::EngineError;

/// The longest single statement a streamed text may hold (`SQL_STATEMENT_SIZE`): a text
/// that does not parse is held until its end, and must not grow without bound meanwhile.
pub const MAX_STATEMENT_BYTES: usize = 16 << 20;

/// One statement of a streamed text, with where it began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberedStatement {
    /// 1-based, counted over the whole text.
    pub number: u64,
    /// 1-based line of the text where the statement starts.
    pub line: u64,
    pub sql: String,
}

/// Cuts SQL text fed in pieces into statements.
#[derive(Default)]
pub struct StatementSplitter {
    pending: Vec<u8>,
    statements: u64,
    /// Lines wholly consumed before `pending` starts.
    lines_before: u64,
}

impl StatementSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next piece of text and returns every statement it completed. With `last`,
    /// the text has ended: the rest must be whole statements (the last may lack its `;`).
    pub fn push(&mut self, piece: &[u8], last: bool) -> Result<Vec<NumberedStatement>, EngineError> {
        self.pending.extend_from_slice(piece);
        let mut out = Vec::new();
        let mut consumed = 0;
        {
            let text = &self.pending[..];
            let mut parser = Parser::new(text);
            loop {
                let start = consumed;
                match parser.next() {
                    None => break,
                    Some(Ok(_)) => {
                        let end = parser.offset().min(text.len());
                        // The parser reads past the statement's `;` into the whitespace and
                        // comments after it; the statement ends at its own `;`. Without one
                        // it may still grow ("SELECT 1" + "2;").
                        let (end, terminated) = match own_end(&text[start..end]) {
                            Some(semi) => (start + semi, true),
                            None => (end, false),
                        };
                        if !terminated && !last {
                            break;
                        }
                        let begins = start + leading_trivia(&text[start..end]);
                        let sql = std::str::from_utf8(&text[begins..end]).map_err(|_| {
                            EngineError::InvalidFile(format!(
                                "statement {} (line {}) is not UTF-8 text",
                                self.statements + 1,
                                self.line_at(begins)
                            ))
                        })?;
                        self.statements += 1;
                        out.push(NumberedStatement { number: self.statements, line: self.line_at(begins), sql: sql.to_string() });
                        consumed = end;
                    }
                    Some(Err(e)) => {
                        if last {
                            return Err(EngineError::sql(format!(
                                "statement {} (line {}) does not parse: {e}",
                                self.statements + 1,
                                self.line_at(start + leading_trivia(&text[start..]))
                            )));
                        }
                        // Most likely cut in the middle: wait for more text.
                        break;
                    }
                }
            }
        }
        self.lines_before += self.pending[..consumed].iter().filter(|b| **b == b'\n').count() as u64;
        self.pending.drain(..consumed);
        if self.pending.len() > MAX_STATEMENT_BYTES {
            return Err(EngineError::Limit(format!(
                "statement {} (line {}) is longer than {MAX_STATEMENT_BYTES} bytes, or does not parse (SQL_STATEMENT_SIZE limit)",
                self.statements + 1,
                self.line_at(leading_trivia(&self.pending))
            )));
        }
        if last && !crate::local::is_blank_sql(&String::from_utf8_lossy(&self.pending)) {
            return Err(EngineError::sql(format!("the text ends inside statement {}", self.statements + 1)));
        }
        Ok(out)
    }

    /// Statements cut so far.
    pub fn statements(&self) -> u64 {
        self.statements
    }

    /// The 1-based line of offset `at` of the pending text.
    fn line_at(&self, at: usize) -> u64 {
        self.lines_before + 1 + self.pending[..at.min(self.pending.len())].iter().filter(|b| **b == b'\n').count() as u64
    }
}

/// Where a parsed statement's text ends: just after its final `;`, if the last token that
/// is not whitespace or a comment is one.
fn own_end(statement: &[u8]) -> Option<usize> {
    let mut lexer = Lexer::new(statement);
    let mut at = 0;
    let mut last_semi_end = None;
    while let Some(Ok(token)) = lexer.next() {
        at += token.value.len();
        if !token.token_type.is_none() {
            last_semi_end = (token.token_type == TokenType::TK_SEMI).then_some(at);
        }
    }
    last_semi_end
}

/// Bytes of whitespace and comments before the first token of `text`.
fn leading_trivia(text: &[u8]) -> usize {
    let mut lexer = Lexer::new(text);
    let mut at = 0;
    while let Some(Ok(token)) = lexer.next() {
        if !token.token_type.is_none() {
            break;
        }
        at += token.value.len();
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_in_pieces(text: &str, piece: usize) -> Result<Vec<NumberedStatement>, EngineError> {
        let mut s = StatementSplitter::new();
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        for chunk in bytes.chunks(piece.max(1)) {
            out.extend(s.push(chunk, false)?);
        }
        out.extend(s.push(&[], true)?);
        Ok(out)
    }

    #[test]
    fn statements_come_out_whole_however_the_text_is_cut() {
        let text = "CREATE TABLE t(a, b);\nINSERT INTO t VALUES(1, 'x;\ny');\n-- a comment; with a semicolon\n\
                    CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  UPDATE t SET b = 'z;' WHERE a = new.a;\nEND;\n\
                    INSERT INTO t VALUES(12, X'00ff');\nSELECT 1";
        let whole = split_in_pieces(text, text.len()).unwrap();
        assert_eq!(whole.len(), 5, "{whole:#?}");
        assert_eq!(whole[1].sql, "INSERT INTO t VALUES(1, 'x;\ny');");
        assert!(whole[2].sql.contains("CREATE TRIGGER") && whole[2].sql.trim_end().ends_with("END;"));
        assert_eq!((whole[2].number, whole[2].line), (3, 5));
        assert_eq!(whole[3].line, 8);
        for piece in [1, 2, 3, 7, 64] {
            let cut = split_in_pieces(text, piece).unwrap();
            assert_eq!(cut, whole, "pieces of {piece} bytes");
        }
    }

    #[test]
    fn a_bad_statement_is_named_by_number_and_line() {
        let e = split_in_pieces("CREATE TABLE t(a);\n\nINSERT INTO t VALUES(1;\nSELECT 2;", 5).unwrap_err();
        assert!(e.to_string().contains("statement 2 (line 3)"), "{e}");
        let e = split_in_pieces("SELECT 1;\nSELECT 'unterminated", 4).unwrap_err();
        assert!(e.to_string().contains("statement 2"), "{e}");
        assert!(split_in_pieces("  \n-- only a comment\n", 3).unwrap().is_empty());
    }
}

//! Stages and spans: the units of placement.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One unit of placement in a model with `L` blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stage {
    Embed,
    Block(u32),
    Head,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Embed => write!(f, "embed"),
            Stage::Block(i) => write!(f, "block {i}"),
            Stage::Head => write!(f, "head"),
        }
    }
}

/// A half-open range of block indices `start..end` that one node serves.
///
/// A span that starts at block 0 also serves `embed`; one that ends at the last block also
/// serves `head`. Which of those applies depends on the model's block count, so the span itself
/// stores only the block range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpanError {
    #[error("span `{0}` is not of the form A..B (for example 0..10)")]
    Syntax(String),
    #[error("span {start}..{end} is empty: the end must be greater than the start")]
    Empty { start: u32, end: u32 },
    #[error("span {start}..{end} does not fit a model of {blocks} blocks")]
    OutOfRange { start: u32, end: u32, blocks: u32 },
}

impl Span {
    pub fn new(start: u32, end: u32) -> Result<Self, SpanError> {
        if end <= start {
            return Err(SpanError::Empty { start, end });
        }
        Ok(Span { start, end })
    }

    /// The span covering a whole model of `blocks` blocks.
    pub fn full(blocks: u32) -> Self {
        Span {
            start: 0,
            end: blocks,
        }
    }

    pub fn len(&self) -> u32 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Checks the span against a model's block count.
    pub fn check(&self, blocks: u32) -> Result<(), SpanError> {
        if self.is_empty() {
            return Err(SpanError::Empty {
                start: self.start,
                end: self.end,
            });
        }
        if self.end > blocks {
            return Err(SpanError::OutOfRange {
                start: self.start,
                end: self.end,
                blocks,
            });
        }
        Ok(())
    }

    pub fn has_embed(&self) -> bool {
        self.start == 0
    }

    pub fn has_head(&self, blocks: u32) -> bool {
        self.end == blocks
    }

    /// Every stage the span serves, in order.
    pub fn stages(&self, blocks: u32) -> Vec<Stage> {
        let mut out = Vec::with_capacity(self.len() as usize + 2);
        if self.has_embed() {
            out.push(Stage::Embed);
        }
        out.extend((self.start..self.end).map(Stage::Block));
        if self.has_head(blocks) {
            out.push(Stage::Head);
        }
        out
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

impl FromStr for Span {
    type Err = SpanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .trim()
            .split_once("..")
            .ok_or_else(|| SpanError::Syntax(s.to_string()))?;
        let start = a
            .trim()
            .parse()
            .map_err(|_| SpanError::Syntax(s.to_string()))?;
        let end = b
            .trim()
            .parse()
            .map_err(|_| SpanError::Syntax(s.to_string()))?;
        Span::new(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let s: Span = "0..10".parse().unwrap();
        assert_eq!(s, Span { start: 0, end: 10 });
        assert_eq!(s.to_string(), "0..10");
        assert!(matches!(
            "3..3".parse::<Span>(),
            Err(SpanError::Empty { .. })
        ));
        assert!(matches!("3-4".parse::<Span>(), Err(SpanError::Syntax(_))));
        assert!(matches!("a..4".parse::<Span>(), Err(SpanError::Syntax(_))));
    }

    #[test]
    fn stages_include_embed_and_head_at_the_ends() {
        assert_eq!(
            Span::new(0, 2).unwrap().stages(3),
            vec![Stage::Embed, Stage::Block(0), Stage::Block(1)]
        );
        assert_eq!(
            Span::new(2, 3).unwrap().stages(3),
            vec![Stage::Block(2), Stage::Head]
        );
        assert_eq!(Span::full(1).stages(1).len(), 3);
        assert!(Span::new(1, 4).unwrap().check(3).is_err());
    }
}

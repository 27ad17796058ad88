//! Stop strings over streamed text: text is let through as soon as it cannot be the start of a
//! stop string, and nothing from a stop string on is ever shown.

pub struct StopStrings {
    stops: Vec<String>,
    /// Text held back because it may begin a stop string.
    pending: String,
    stopped: bool,
}

impl StopStrings {
    pub fn new(stops: Vec<String>) -> Self {
        StopStrings {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes a new piece of text and returns what may be shown now.
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.pending.push_str(piece);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first {
            self.stopped = true;
            let shown = self.pending[..at].to_string();
            self.pending.clear();
            return shown;
        }
        // Hold back the longest tail that some stop string begins with.
        let hold = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.pending.len());
        let rest = self.pending.split_off(hold);
        std::mem::replace(&mut self.pending, rest)
    }

    /// The text still held back when the generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut s = StopStrings::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out: Vec<String> = pieces.iter().map(|p| s.push(p)).collect();
        out.push(s.finish());
        (out, s.stopped())
    }

    #[test]
    fn text_passes_until_a_stop_string_even_across_pieces() {
        assert_eq!(run(&[], &["a", "b"]).0, ["a", "b", ""]);
        let (out, stopped) = run(&["END"], &["x E", "N", "D y"]);
        assert_eq!(out, ["x ", "", "", ""]);
        assert!(stopped);
        let (out, stopped) = run(&["END"], &["x E", "NX", "!"]);
        assert_eq!(out, ["x ", "ENX", "!", ""]);
        assert!(!stopped);
        // A held-back tail comes out at the end.
        let (out, _) = run(&["\n\n"], &["a\n"]);
        assert_eq!(out, ["a", "\n"]);
        // The earliest of several stop strings wins; multi-byte text is cut on characters.
        let (out, _) = run(&["é!", "b"], &["aé", "!b"]);
        assert_eq!(out, ["a", "", ""]);
    }
}

//! One generation: prefill the prompt, then sample and decode token by token, streaming text.

use std::time::{Duration, Instant};

use baton_node::sampling::{Sampler, Sampling};
use baton_node::tokenizer::Tokenizer;
use baton_node::{Engine, Logits, RunError, SpanInput};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-turn or end-of-text token.
    EndOfTurn,
    /// `max_tokens` were generated.
    Length,
    /// The model's context is full.
    Context,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub text: String,
    pub prompt_tokens: usize,
    pub time_to_first_token: Duration,
    pub decode_time: Duration,
    pub stop: StopReason,
}

impl Generation {
    /// Tokens per second after the first.
    pub fn decode_tokens_per_s(&self) -> f64 {
        let n = self.ids.len().saturating_sub(1);
        if n == 0 || self.decode_time.is_zero() {
            return 0.0;
        }
        n as f64 / self.decode_time.as_secs_f64()
    }
}

/// Turns token ids into text as they arrive, holding back a piece that ends inside a UTF-8
/// character until the rest of it comes.
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    shown: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        TextStream {
            tok,
            ids: Vec::new(),
            shown: 0,
        }
    }

    /// Adds a token and returns the new text it completes, if any.
    pub fn push(&mut self, id: u32) -> String {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids).unwrap_or_default();
        if text.ends_with('\u{fffd}')
            || text.len() <= self.shown
            || !text.is_char_boundary(self.shown)
        {
            return String::new();
        }
        let new = text[self.shown..].to_string();
        self.shown = text.len();
        new
    }
}

/// Generates up to `max_tokens` after `prompt`, calling `on_text` with each new piece of text.
/// Stop tokens end the generation and are not shown.
pub fn generate(
    engine: &Engine,
    tok: &Tokenizer,
    prompt: &[u32],
    max_tokens: usize,
    params: Sampling,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, RunError> {
    let start = Instant::now();
    let vocab = engine.vocab();
    let mut cache = engine.new_cache()?;
    let mut last = Vec::new();
    engine.run_chunked(
        &mut cache,
        SpanInput::Tokens(prompt),
        Logits::Last,
        &mut |l| last = l.to_vec(),
    )?;
    let mut sampler = Sampler::new(params);
    let mut stream = TextStream::new(tok);
    let mut ids = Vec::new();
    let mut text = String::new();
    let mut first = None;
    let stop = loop {
        let next = sampler.sample(&last[last.len() - vocab..]);
        first.get_or_insert_with(|| start.elapsed());
        if tok.stop_ids.contains(&next) {
            break StopReason::EndOfTurn;
        }
        ids.push(next);
        let piece = stream.push(next);
        if !piece.is_empty() {
            on_text(&piece);
            text.push_str(&piece);
        }
        if ids.len() >= max_tokens {
            break StopReason::Length;
        }
        if cache.pos() >= engine.context() {
            break StopReason::Context;
        }
        last = engine.forward(&mut cache, SpanInput::Tokens(&[next]), Logits::Last)?;
    };
    let ttft = first.unwrap_or_default();
    Ok(Generation {
        ids,
        text,
        prompt_tokens: prompt.len(),
        time_to_first_token: ttft,
        decode_time: start.elapsed().saturating_sub(ttft),
        stop,
    })
}

/// Generates along a swarm session, as [`generate`] does in one process: the hop holding
/// `head` samples with the session's settings.
pub async fn generate_remote(
    session: &mut crate::remote::RemoteSession,
    tok: &Tokenizer,
    prompt: &[u32],
    max_tokens: usize,
    context: usize,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<Generation, baton_node::net::NetError> {
    let start = Instant::now();
    let mut stream = TextStream::new(tok);
    let mut ids = Vec::new();
    let mut text = String::new();
    let mut next = session.step(prompt).await?.token;
    let ttft = start.elapsed();
    let mut pos = prompt.len();
    let stop = loop {
        if tok.stop_ids.contains(&next) {
            break StopReason::EndOfTurn;
        }
        ids.push(next);
        let piece = stream.push(next);
        if !piece.is_empty() {
            on_text(&piece);
            text.push_str(&piece);
        }
        if ids.len() >= max_tokens {
            break StopReason::Length;
        }
        if pos >= context {
            break StopReason::Context;
        }
        next = session.step(&[next]).await?.token;
        pos += 1;
    };
    Ok(Generation {
        ids,
        text,
        prompt_tokens: prompt.len(),
        time_to_first_token: ttft,
        decode_time: start.elapsed().saturating_sub(ttft),
        stop,
    })
}

//! One generation: prefill the prompt, then sample and decode token by token, streaming text.

use std::time::{Duration, Instant};

use baton_node::sampling::{Sampler, Sampling};
use baton_node::tokenizer::Tokenizer;
use baton_node::{Engine, Logits, RunError, SpanInput};

use baton_protocol::wire::TokenOut;

use crate::remote::RemoteSession;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-turn or end-of-text token.
    EndOfTurn,
    /// `max_tokens` were generated.
    Length,
    /// The model's context is full.
    Context,
    /// The caller stopped it (a stop string, a closed connection).
    Stopped,
}

impl StopReason {
    /// OpenAI's name for it.
    pub fn finish_reason(self) -> &'static str {
        match self {
            StopReason::EndOfTurn | StopReason::Stopped => "stop",
            StopReason::Length | StopReason::Context => "length",
        }
    }
}

/// A generated token, with what the head hop reported of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Chosen {
    pub id: u32,
    /// Its log-probability, when the session asked for it.
    pub logprob: Option<f32>,
    /// The likeliest tokens with theirs, likeliest first, when the session asked for them.
    pub top: Vec<(u32, f32)>,
}

impl Chosen {
    fn plain(id: u32) -> Chosen {
        Chosen {
            id,
            logprob: None,
            top: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub ids: Vec<u32>,
    /// The same tokens with their log-probabilities, where asked for.
    pub tokens: Vec<Chosen>,
    pub text: String,
    pub prompt_tokens: usize,
    /// Of those, the tokens the hops took from an earlier session's prompt.
    pub cached_tokens: usize,
    pub time_to_first_token: Duration,
    pub decode_time: Duration,
    pub stop: StopReason,
    /// Along a swarm: the compute time of each hop, summed over the decode steps (all steps
    /// after the first).
    pub hop_compute: Vec<Duration>,
    /// Steps after the first, which `decode_time` and `hop_compute` cover.
    pub decode_steps: usize,
    /// Of those, the steps the head hop started by itself, without a round trip through the
    /// client.
    pub fed_on: usize,
    /// The time between each two tokens taken, in order: the inter-token latencies.
    pub gaps: Vec<Duration>,
}

impl Generation {
    /// Tokens per second after the first.
    pub fn decode_tokens_per_s(&self) -> f64 {
        let n = self.decode_steps;
        if n == 0 || self.decode_time.is_zero() {
            return 0.0;
        }
        n as f64 / self.decode_time.as_secs_f64()
    }

    /// Along a swarm, what a decode step took: "per token: T ms = compute A t, B t + network and
    /// the rest r (ms)", the hops named by `names` in route order. `None` without decode steps.
    pub fn breakdown(&self, names: &[String]) -> Option<String> {
        if self.decode_steps == 0 {
            return None;
        }
        let per = |d: Duration| d.as_secs_f64() * 1e3 / self.decode_steps as f64;
        let hops: Vec<String> = self
            .hop_compute
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let name = names.get(i).map_or("?", String::as_str);
                format!("{name} {:.2}", per(*d))
            })
            .collect();
        let step = per(self.decode_time);
        let compute: f64 = self.hop_compute.iter().map(|d| per(*d)).sum();
        Some(format!(
            "per token: {step:.2} ms = compute {} + network and the rest {:.2} (ms); \
             {} of {} steps fed on by the head hop",
            hops.join(", "),
            step - compute,
            self.fed_on,
            self.decode_steps
        ))
    }

    /// Tokens the model sampled: the ones shown, and the end-of-turn token that ended them.
    pub fn completion_tokens(&self) -> usize {
        self.ids.len() + usize::from(self.stop == StopReason::EndOfTurn)
    }
}

/// Turns token ids into text as they arrive, holding back a piece that ends inside a UTF-8
/// character until the rest of it comes. Only the tokens since the last piece shown (and the
/// one before them, for context) are decoded again, so each token costs the same however long
/// the generation.
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    /// Where the window decoded for context starts.
    prefix: usize,
    /// Where the tokens not yet shown start.
    read: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        TextStream {
            tok,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds a token and returns the new text it completes, if any.
    pub fn push(&mut self, id: u32) -> String {
        self.ids.push(id);
        let decode = |ids: &[u32]| self.tok.decode(ids).unwrap_or_default();
        let before = decode(&self.ids[self.prefix..self.read]);
        let text = decode(&self.ids[self.prefix..]);
        if text.ends_with('\u{fffd}')
            || text.len() <= before.len()
            || !text.is_char_boundary(before.len())
        {
            return String::new();
        }
        self.prefix = self.read;
        self.read = self.ids.len();
        text[before.len()..].to_string()
    }
}

/// What a generation keeps of each sampled token, wherever it was sampled: the ids, the text,
/// and when to stop.
struct Output<'a> {
    tok: &'a Tokenizer,
    stream: TextStream<'a>,
    tokens: Vec<Chosen>,
    /// How many of `tokens` the text given out so far covers.
    shown: usize,
    /// When the last token was taken, and the gaps between tokens so far.
    last_at: Option<Instant>,
    gaps: Vec<Duration>,
    text: String,
    max_tokens: usize,
    context: usize,
}

impl<'a> Output<'a> {
    fn new(tok: &'a Tokenizer, max_tokens: usize, context: usize) -> Self {
        Output {
            tok,
            stream: TextStream::new(tok),
            tokens: Vec::new(),
            shown: 0,
            last_at: None,
            gaps: Vec::new(),
            text: String::new(),
            max_tokens,
            context,
        }
    }

    /// Takes the token sampled when the context holds `pos` tokens; says why to stop, if so.
    /// `on_text` gets each new piece of text and returns false to stop.
    fn accept(&mut self, next: Chosen, pos: usize, on_text: &mut OnText) -> Option<StopReason> {
        let now = Instant::now();
        if let Some(last) = self.last_at.replace(now) {
            self.gaps.push(now - last);
        }
        if self.tok.stop_ids.contains(&next.id) {
            return Some(StopReason::EndOfTurn);
        }
        let piece = self.stream.push(next.id);
        self.tokens.push(next);
        if !piece.is_empty() {
            self.text.push_str(&piece);
            let tokens = &self.tokens[self.shown..];
            self.shown = self.tokens.len();
            if !on_text(&piece, tokens) {
                return Some(StopReason::Stopped);
            }
        }
        if self.tokens.len() >= self.max_tokens {
            return Some(StopReason::Length);
        }
        (pos >= self.context).then_some(StopReason::Context)
    }

    /// The last token taken.
    fn last(&self) -> u32 {
        self.tokens.last().map_or(0, |c| c.id)
    }

    fn finish(
        self,
        prompt_tokens: usize,
        start: Instant,
        ttft: Duration,
        stop: StopReason,
    ) -> Generation {
        Generation {
            ids: self.tokens.iter().map(|c| c.id).collect(),
            tokens: self.tokens,
            text: self.text,
            prompt_tokens,
            cached_tokens: 0,
            time_to_first_token: ttft,
            decode_time: start.elapsed().saturating_sub(ttft),
            stop,
            hop_compute: Vec::new(),
            decode_steps: 0,
            fed_on: 0,
            gaps: self.gaps,
        }
    }
}

/// What a generation calls with each new piece of text and the tokens it completes (those
/// since the last piece); returning false stops it.
pub type OnText<'a> = dyn FnMut(&str, &[Chosen]) -> bool + Send + 'a;

/// Generates up to `max_tokens` after `prompt`, calling `on_text` with each new piece of text.
/// Stop tokens end the generation and are not shown.
pub fn generate(
    engine: &Engine,
    tok: &Tokenizer,
    prompt: &[u32],
    max_tokens: usize,
    params: Sampling,
    on_text: &mut OnText,
) -> Result<Generation, RunError> {
    let start = Instant::now();
    let vocab = engine.vocab();
    let mut cache = engine.new_cache()?;
    let mut last = cache.run_step(SpanInput::Tokens(prompt), Logits::Last)?;
    let mut sampler = Sampler::new(params);
    let mut out = Output::new(tok, max_tokens, engine.context());
    let mut ttft = None;
    let mut decode_steps = 0;
    let stop = loop {
        let next = sampler.sample(&last[last.len() - vocab..]);
        ttft.get_or_insert_with(|| start.elapsed());
        if let Some(stop) = out.accept(Chosen::plain(next), cache.pos(), on_text) {
            break stop;
        }
        last = cache.forward(SpanInput::Tokens(&[next]), Logits::Last)?;
        decode_steps += 1;
    };
    let mut g = out.finish(prompt.len(), start, ttft.unwrap_or_default(), stop);
    g.decode_steps = decode_steps;
    Ok(g)
}

fn chosen(t: TokenOut) -> Chosen {
    Chosen {
        id: t.token,
        logprob: t.logprob,
        top: t.top,
    }
}

/// The most steps the head hop starts by itself between two steps this client sends: between
/// those, the client moves hops that are leaving.
const RUN_AHEAD: usize = 32;

/// Generates along a swarm session, as [`generate`] does in one process: the hop holding
/// `head` samples with the session's settings, and feeds each token it samples straight to
/// the first hop as the next step while the generation wants more. `prompt` is what to add to
/// what the session already holds (all of the prompt for a new session).
pub async fn generate_remote(
    session: &mut RemoteSession,
    tok: &Tokenizer,
    prompt: &[u32],
    max_tokens: usize,
    on_text: &mut OnText<'_>,
) -> Result<Generation, baton_node::net::NetError> {
    let start = Instant::now();
    let context = session.max_tokens();
    let mut out = Output::new(tok, max_tokens, context);
    // How many steps after one that feeds `tokens` the generation may still want, if nothing
    // stops it: the head hop may start that many by itself.
    let wanted = |session: &RemoteSession, out: &Output, tokens: usize| {
        if !session.feed_on {
            return 0;
        }
        let by_length = max_tokens.saturating_sub(out.tokens.len() + 1);
        let by_context = context.saturating_sub(session.fed().len() + tokens);
        by_length.min(by_context).min(RUN_AHEAD) as u32
    };
    let more = wanted(session, &out, prompt.len());
    let mut next = chosen(session.step(prompt, more).await?);
    let ttft = start.elapsed();
    let mut hop_compute: Vec<Duration> = Vec::new();
    let mut decode_steps = 0;
    let mut fed_on = 0;
    let stop = loop {
        if let Some(stop) = out.accept(next, session.fed().len(), on_text) {
            break stop;
        }
        let t = match session.follow().await {
            Some(t) => {
                fed_on += 1;
                t?
            }
            None => {
                let more = wanted(session, &out, 1);
                session.step(&[out.last()], more).await?
            }
        };
        hop_compute.resize(t.hop_us.len().max(hop_compute.len()), Duration::ZERO);
        for (sum, us) in hop_compute.iter_mut().zip(&t.hop_us) {
            *sum += Duration::from_micros(*us as u64);
        }
        next = chosen(t);
        decode_steps += 1;
    };
    let mut g = out.finish(prompt.len(), start, ttft, stop);
    g.hop_compute = hop_compute;
    g.decode_steps = decode_steps;
    g.fed_on = fed_on;
    Ok(g)
}

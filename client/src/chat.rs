//! A conversation with a model on a swarm, kept across turns through the model's chat
//! template. The session stays open between turns: when the new prompt begins with what the
//! session's caches already hold, only the rest is sent.

use baton_node::net::NetError;
use baton_node::tokenizer::Message;
use baton_protocol::wire::{ErrorCode, Sampling};

use crate::generate::{generate_remote, Generation, OnText};
use crate::model::{PromptError, SwarmModel, TokenAsk};
use crate::remote::RemoteSession;
use crate::swarm::SwarmError;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error(transparent)]
    Swarm(#[from] SwarmError),
    #[error("the generation failed: {0}")]
    Generation(#[from] baton_node::net::NetError),
}

pub struct Chat {
    system: Option<String>,
    pub messages: Vec<Message>,
    session: Option<RemoteSession>,
    /// The last answer's timings.
    pub last: Option<Generation>,
}

fn message(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
    }
}

impl Chat {
    pub fn new(system: Option<String>) -> Chat {
        let mut chat = Chat {
            system,
            messages: Vec::new(),
            session: None,
            last: None,
        };
        chat.reset();
        chat
    }

    /// Forgets the conversation (the system message stays).
    pub fn reset(&mut self) {
        self.messages = self.system.iter().map(|s| message("system", s)).collect();
        self.drop_session();
    }

    /// Ends the conversation's session on the nodes.
    pub async fn close(&mut self) {
        if let Some(s) = self.session.take() {
            s.close().await;
        }
    }

    fn drop_session(&mut self) {
        if let Some(s) = self.session.take() {
            tokio::spawn(s.close());
        }
    }

    /// Answers `user`, streaming the text through `on_text`. If this future is dropped before
    /// it ends (the user interrupted it), call [`Chat::interrupted`] with the text shown.
    pub async fn reply(
        &mut self,
        model: &SwarmModel,
        user: &str,
        sampling: Sampling,
        max_tokens: usize,
        on_text: &mut OnText<'_>,
    ) -> Result<Generation, ChatError> {
        let mut messages = self.messages.clone();
        messages.push(message("user", user));
        let prompt = model.chat_prompt(&messages)?;
        // Reuse the open session when it holds a prefix of the prompt and has room.
        let mut session = match self.session.take() {
            Some(s)
                if prompt.starts_with(s.fed())
                    && !s.running_ahead()
                    && prompt.len() + max_tokens <= s.max_tokens()
                    && s.fed().len() < prompt.len() =>
            {
                s
            }
            other => {
                if let Some(s) = other {
                    tokio::spawn(s.close());
                }
                model
                    .open(sampling, model.context(), TokenAsk::default(), &prompt)
                    .await?
            }
        };
        let reused = !session.fed().is_empty();
        let new = &prompt[session.fed().len()..];
        let g = match generate_remote(&mut session, &model.tok, new, max_tokens, on_text).await {
            // The nodes closed the session while the user was away (idle timeout): start over.
            Err(NetError::Remote(e)) if reused && e.code == ErrorCode::UnknownSession => {
                session = model
                    .open(sampling, model.context(), TokenAsk::default(), &prompt)
                    .await?;
                let new = &prompt[session.fed().len()..];
                generate_remote(&mut session, &model.tok, new, max_tokens, on_text).await?
            }
            other => other?,
        };
        self.session = Some(session);
        self.messages = messages;
        self.messages.push(message("assistant", &g.text));
        self.last = Some(g.clone());
        Ok(g)
    }

    /// Records an answer cut short: the user's message and the text shown stay in the
    /// conversation; the session, left mid-step, is not used again.
    pub fn interrupted(&mut self, user: &str, shown: &str) {
        self.drop_session();
        self.messages.push(message("user", user));
        self.messages.push(message("assistant", shown));
    }
}

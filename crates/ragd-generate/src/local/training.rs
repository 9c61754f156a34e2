//! Conversations as training sequences: the tokens the local generator
//! would see for a whole chat, and which of them are the assistant's.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use ragd_core::{ChatMessage, ChatRole};
use tokenizers::Tokenizer;

use super::tokenizer;
use crate::error::{Error, Result};
use crate::template::ChatTemplate;

/// A conversation's tokens; `assistant[i]` tells whether token `i` was
/// written by the assistant (its answer and the end-of-turn marker after
/// it), the only tokens a model is trained to predict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedChat {
    pub ids: Vec<u32>,
    pub assistant: Vec<bool>,
}

/// The GGUF model's tokenizer and chat template, as [`crate::LocalGguf`]
/// builds them, so what is trained is what is served.
pub struct ChatTokenizer {
    tokenizer: Tokenizer,
    template: ChatTemplate,
}

impl ChatTokenizer {
    /// From a GGUF file's metadata (`tokenizer.ggml.*`,
    /// `tokenizer.chat_template`).
    pub fn from_gguf_metadata(metadata: &HashMap<String, Value>) -> Result<Self> {
        let vocab = tokenizer::from_gguf(metadata)?;
        let source = metadata.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned();
        Ok(Self {
            template: ChatTemplate::new(source, vocab.bos_token, vocab.eos_token),
            tokenizer: vocab.tokenizer,
        })
    }

    /// The whole conversation rendered with the chat template, cut into
    /// the parts before each assistant turn and the turns themselves, each
    /// part tokenised on its own, as a prompt and its answer are when the
    /// model serves. A turn's text is what rendering it adds to the prompt
    /// that cues it, so the template must render a conversation's start the
    /// same whether or not more follows (every chat template in use does).
    pub fn encode(&self, messages: &[ChatMessage]) -> Result<TokenizedChat> {
        let whole = self.template.render_turns(messages, false);
        let mut chat = TokenizedChat { ids: Vec::new(), assistant: Vec::new() };
        let mut done = 0;
        for (turn, _) in messages.iter().enumerate().filter(|(_, m)| m.role == ChatRole::Assistant) {
            let prompt = self.template.render_turns(&messages[..turn], true);
            let answered = self.template.render_turns(&messages[..=turn], false);
            let stable =
                whole.starts_with(&answered) && answered.starts_with(&prompt) && prompt.len() >= done;
            if !stable {
                return Err(Error::Template(
                    "the chat template renders a conversation's start differently as more turns follow, \
                     so the assistant's tokens cannot be told apart"
                        .into(),
                ));
            }
            self.push(&mut chat, &whole[done..prompt.len()], false)?;
            self.push(&mut chat, &whole[prompt.len()..answered.len()], true)?;
            done = answered.len();
        }
        self.push(&mut chat, &whole[done..], false)?;
        Ok(chat)
    }

    fn push(&self, chat: &mut TokenizedChat, text: &str, assistant: bool) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let encoding =
            self.tokenizer.encode_fast(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        chat.ids.extend_from_slice(encoding.get_ids());
        chat.assistant.resize(chat.ids.len(), assistant);
        Ok(())
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::path::Path;

    use candle_core::quantized::gguf_file;

    use super::*;

    fn smollm2() -> ChatTokenizer {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/smollm2-135m-instruct/model.gguf");
        let mut file = File::open(&path).expect("model files are missing: run scripts/fetch-models first");
        let content = gguf_file::Content::read(&mut file).expect("gguf");
        ChatTokenizer::from_gguf_metadata(&content.metadata).expect("tokenizer")
    }

    #[test]
    fn only_the_assistants_turns_are_marked() {
        let tokenizer = smollm2();
        let messages = [
            ChatMessage::new(ChatRole::User, "Name a colour."),
            ChatMessage::new(ChatRole::Assistant, "Blue."),
            ChatMessage::new(ChatRole::User, "Another?"),
            ChatMessage::new(ChatRole::Assistant, "Green."),
        ];
        let chat = tokenizer.encode(&messages).expect("encode");
        assert_eq!(chat.ids.len(), chat.assistant.len());
        let marked: Vec<u32> =
            chat.ids.iter().zip(&chat.assistant).filter(|(_, a)| **a).map(|(id, _)| *id).collect();
        let text = tokenizer.tokenizer().decode(&marked, false).expect("decode");
        assert_eq!(text, "Blue.<|im_end|>\nGreen.<|im_end|>\n");
        // The whole sequence is the template's rendering, default system
        // prompt included.
        let whole = tokenizer.tokenizer().decode(&chat.ids, false).expect("decode");
        assert!(
            whole.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"),
            "{whole}"
        );
        assert!(whole.ends_with("<|im_start|>assistant\nGreen.<|im_end|>\n"), "{whole}");
    }
}

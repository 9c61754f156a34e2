//! Chat messages to prompt text, with the model's own Jinja chat template.

use minijinja::{context, Environment};
use ragd_core::ChatMessage;
use serde::Serialize;

const TEMPLATE_NAME: &str = "chat";

/// A GGUF's `tokenizer.chat_template`, rendered the way Hugging Face
/// transformers does (trim_blocks, lstrip_blocks, loop controls,
/// `raise_exception`, Python string methods), with ChatML as the fallback when
/// the model has no template or its template cannot render the conversation.
pub(crate) struct ChatTemplate {
    env: Option<Environment<'static>>,
    bos_token: String,
    eos_token: String,
}

#[derive(Serialize)]
struct TemplateMessage<'a> {
    role: &'a str,
    content: &'a str,
}

impl ChatTemplate {
    pub(crate) fn new(source: Option<String>, bos_token: String, eos_token: String) -> Self {
        let env = source.and_then(|source| match compile(source) {
            Ok(env) => Some(env),
            Err(err) => {
                tracing::warn!(error = %err, "chat template does not compile, using chatml");
                None
            }
        });
        Self { env, bos_token, eos_token }
    }

    /// The prompt for `messages`, ending with the cue for the assistant's
    /// turn.
    pub(crate) fn render(&self, messages: &[ChatMessage]) -> String {
        self.render_turns(messages, true)
    }

    /// The conversation as text; with `add_generation_prompt`, followed by
    /// the cue for the assistant's turn (a prompt), without it as it stands
    /// (a finished conversation, for training).
    pub(crate) fn render_turns(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        let Some(env) = &self.env else {
            return chatml(messages, add_generation_prompt);
        };
        match self.render_with(env, messages, add_generation_prompt) {
            Ok(prompt) => prompt,
            Err(err) => {
                tracing::warn!(error = %err, "chat template failed to render, using chatml");
                chatml(messages, add_generation_prompt)
            }
        }
    }

    fn render_with(
        &self,
        env: &Environment<'static>,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, minijinja::Error> {
        let messages: Vec<TemplateMessage<'_>> =
            messages.iter().map(|m| TemplateMessage { role: m.role.as_str(), content: &m.content }).collect();
        env.get_template(TEMPLATE_NAME)?.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
    }
}

fn compile(source: String) -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_template_owned(TEMPLATE_NAME, source)?;
    Ok(env)
}

fn raise_exception(message: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
}

fn chatml(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut prompt = String::new();
    for message in messages {
        prompt.push_str("<|im_start|>");
        prompt.push_str(message.role.as_str());
        prompt.push('\n');
        prompt.push_str(&message.content);
        prompt.push_str("<|im_end|>\n");
    }
    if add_generation_prompt {
        prompt.push_str("<|im_start|>assistant\n");
    }
    prompt
}

#[cfg(test)]
mod tests {
    use ragd_core::ChatRole;

    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn conversation() -> Vec<ChatMessage> {
        vec![ChatMessage::new(ChatRole::System, "Be brief."), ChatMessage::new(ChatRole::User, "Hi")]
    }

    fn template(source: Option<&str>) -> ChatTemplate {
        ChatTemplate::new(source.map(str::to_owned), "<s>".into(), "</s>".into())
    }

    #[test]
    fn renders_the_model_template() {
        let expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(template(Some(SMOLLM2)).render(&conversation()), expected);
        assert_eq!(template(None).render(&conversation()), expected);
    }

    #[test]
    fn template_defaults_apply() {
        let prompt = template(Some(SMOLLM2)).render(&[ChatMessage::new(ChatRole::User, "Hi")]);
        assert!(prompt.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
    }

    #[test]
    fn falls_back_to_chatml() {
        let cases = [
            // does not compile
            "{% for m in messages %}",
            // raises on purpose
            "{{ raise_exception('roles must alternate') }}",
        ];
        for source in cases {
            assert_eq!(template(Some(source)).render(&conversation()), chatml(&conversation(), true), "{source}");
        }
    }

    #[test]
    fn hugging_face_conventions() {
        // Python string methods, bos_token, and trim_blocks/lstrip_blocks
        // (the newline after a block tag and the indentation before it vanish).
        let source = "{{ bos_token }}{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content.strip().upper() }}]{% endif %}\n{% endfor %}";
        let prompt = template(Some(source)).render(&[
            ChatMessage::new(ChatRole::User, "  hi  "),
            ChatMessage::new(ChatRole::Assistant, "x"),
        ]);
        assert_eq!(prompt, "<s>[HI]");
    }
}

//! The generators against real parts: the local GGUF model, and a stand-in
//! OpenAI-compatible server for the faults a real one cannot be made to show.

mod local;
mod openai;

"""Drives ragd's OpenAI-compatible API with the official `openai` client and
prints what it saw as one JSON object, which tests/api/openai.rs checks.

Usage: RAGD_API_KEY=KEY openai_client.py BASE_URL RAG_MODEL CHAT_MODEL EMBEDDING_MODEL
"""

import json
import os
import sys

import openai
from openai import OpenAI

base_url, rag_model, chat_model, embedding_model = sys.argv[1:5]
# The local model is slow on a busy machine; a retry would only hide that.
client = OpenAI(base_url=base_url, api_key=os.environ["RAGD_API_KEY"], max_retries=0, timeout=600)
question = [{"role": "user", "content": "What gas do plants produce during photosynthesis?"}]
out = {"client_version": openai.__version__}

completion = client.chat.completions.create(model=rag_model, messages=question, max_tokens=24)
out["chat"] = completion.model_dump()

chunks = [
    chunk.model_dump()
    for chunk in client.chat.completions.create(
        model=rag_model,
        messages=[
            {"role": "system", "content": "Answer in one sentence."},
            {"role": "user", "content": "What is sourdough?"},
            {"role": "assistant", "content": "Bread [1]."},
            {"role": "user", "content": "What is a volcano?"},
        ],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
]
out["stream"] = chunks

plain = client.chat.completions.create(
    model=chat_model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
)
out["plain"] = plain.model_dump()

# Without `encoding_format` the client asks for base64 and decodes it itself.
default_format = client.embeddings.create(model=embedding_model, input=["a", "b"])
floats = client.embeddings.create(model=embedding_model, input="a", encoding_format="float")
out["embeddings"] = {
    "count": len(default_format.data),
    "indices": [d.index for d in default_format.data],
    "dimensions": [len(d.embedding) for d in default_format.data],
    "model": default_format.model,
    "prompt_tokens": default_format.usage.prompt_tokens,
    "max_difference": max(abs(x - y) for x, y in zip(default_format.data[0].embedding, floats.data[0].embedding)),
}

out["models"] = [model.id for model in client.models.list()]
out["retrieved_model"] = client.models.retrieve(rag_model).id

try:
    client.chat.completions.create(model="no-such-model", messages=question)
    out["unknown_model"] = "accepted"
except openai.NotFoundError as error:
    out["unknown_model"] = error.status_code

print(json.dumps(out))

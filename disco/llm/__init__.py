"""disco.llm: language models at run time, without the compiler.

    engine = disco.llm.Engine.load("exported_model_dir", session=sess)
    engine.generate(["Once upon a time"], max_new_tokens=32)

- checkpoint.py: a checkpoint's tensors by name (Hugging Face safetensors, GGUF), read
  in slices;
- gguf.py: GGUF files (llama.cpp's, quantized) as checkpoints under Hugging Face's names,
  dequantized to float32, with the config.json and the tokenizer their metadata describe;
- weights.py: each worker's block of every parameter, from the checkpoint, through the
  transforms the compiled model describes (padding, repeated heads, regrouped columns);
- tokenizer.py (chat_template.py, detokenizer.py): text in and out, chat prompts, text
  streamed token by token;
- sampling.py: choosing each sequence's next token (greedy, temperature, top-k/p, seeds);
- generation.py: a request's settings and when its sequence ends (EOS, length, stop strings);
- engine.py: the engine (session, weights, KV caches, batched prefill and decode).
"""
from .engine import Engine, EngineError, Request  # noqa: E402

__all__ = ["Engine", "EngineError", "Request"]

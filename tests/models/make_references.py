"""Regenerate tests/models/references/<family>.npz with Hugging Face transformers (torch's
CPU build): for each tiny checkpoint of tiny.py, the logits of each prompt, then
DECODE_STEPS greedy steps per prompt (the chosen tokens and the logits that chose them,
each from a full forward pass over the sequence so far), in float32; `generate`'s
greedy tokens (do_sample=False, EOS ignored) for GENERATE_PROMPTS, each prompt alone;
and the same for the checkpoint in bfloat16 (its logits, cast to float32, are bfloat16 numbers: a
greedy choice between logits closer than their rounding is a tie). Also
references/smollm2.json: transformers loading SmolLM2-135M-Instruct's GGUF file
(compiler.models.fetch), greedy tokens (EOS ends them) of a chat prompt and of a plain one.

    python tests/models/make_references.py          # needs: pip install torch==2.13.0 transformers

The tests compare against these files, and also live against transformers when it is
installed (references() below is what both use).
"""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tiny  # noqa: E402

REFERENCES = os.path.join(HERE, "references")


def references(family: str, directory: str) -> dict:
    """The reference arrays of `family` from transformers, for the float32 checkpoint
    in `directory` (a bfloat16 one is made beside it)."""
    import torch
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    out: dict = {}
    with torch.no_grad():
        for i, prompt in enumerate(tiny.PROMPTS):
            out[f"prompt_logits_{i}"] = model(torch.tensor([prompt])).logits[0].numpy()
        tokens, logits = _greedy(model, tiny.PROMPTS, tiny.DECODE_STEPS)
        out["tokens"], out["step_logits"] = tokens, logits
        for i, prompt in enumerate(tiny.GENERATE_PROMPTS):
            got = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 do_sample=False, max_new_tokens=tiny.GENERATE_TOKENS,
                                 min_new_tokens=tiny.GENERATE_TOKENS, eos_token_id=None, pad_token_id=0)
            out[f"generate_{i}"] = got[0, len(prompt):].numpy().astype(np.int64)
        bf16_dir = tiny.make_checkpoint(family, directory + "-bf16", "bfloat16")
        bf = AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=torch.bfloat16).eval()
        out["bf16_tokens"], out["bf16_step_logits"] = _greedy(bf, tiny.PROMPTS, tiny.DECODE_STEPS)
        out["bf16_prompt_logits_0"] = bf(torch.tensor([tiny.PROMPTS[0]])).logits[0].float().numpy()
    return out


def _greedy(model, prompts, steps: int):
    """(tokens (len(prompts), steps), logits (steps, len(prompts), vocab) float32)."""
    import torch
    seqs = [list(p) for p in prompts]
    tokens, logits = [], []
    for _ in range(steps):
        step = []
        for s in seqs:
            last = model(torch.tensor([s])).logits[0, -1].float().numpy()
            step.append(last)
        nxt = [int(np.argmax(x)) for x in step]
        for s, t in zip(seqs, nxt):
            s.append(t)
        tokens.append(nxt)
        logits.append(np.stack(step))
    return np.array(tokens, np.int64).T, np.stack(logits).astype(np.float32)


SMOLLM2_CHAT = [{"role": "user", "content": "What is the capital of France?"}]
SMOLLM2_TEXT = "The capital of France is"


def smollm2_reference() -> dict:
    """Greedy tokens (32 at most, EOS ends them) of transformers on SmolLM2's GGUF file."""
    import torch
    import transformers
    from compiler.models.fetch import KNOWN, fetch
    path = fetch("smollm2")
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32).eval()

    def greedy(ids):
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=32)
        return out[0, len(ids):].tolist()
    ids = tok.apply_chat_template(SMOLLM2_CHAT, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    text_ids = tok(SMOLLM2_TEXT)["input_ids"]
    return {"file_sha256": KNOWN["smollm2"].sha256, "messages": SMOLLM2_CHAT, "prompt_ids": ids,
            "generate": greedy(ids), "text_prompt": SMOLLM2_TEXT, "text_prompt_ids": text_ids,
            "text_generate": greedy(text_ids), "transformers": transformers.__version__,
            "torch": torch.__version__}


def main() -> int:
    import json
    os.makedirs(REFERENCES, exist_ok=True)
    with open(os.path.join(REFERENCES, "smollm2.json"), "w") as f:
        json.dump(smollm2_reference(), f, indent=1)
    with tempfile.TemporaryDirectory() as tmp:
        for family in tiny.CONFIGS:
            ref = references(family, tiny.make_checkpoint(family, os.path.join(tmp, family)))
            path = os.path.join(REFERENCES, f"{family}.npz")
            np.savez_compressed(path, **ref)
            print(f"{path}: " + ", ".join(f"{k} {v.shape}" for k, v in ref.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

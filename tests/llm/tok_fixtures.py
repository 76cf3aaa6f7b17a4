"""Small tokenizers built here with the `tokenizers` library (no model hub), written as
checkpoint directories the way the families' own files are:

- byte_level: Qwen2's pipeline (NFC, its split regex, byte-level BPE), ChatML template,
  generation_config.json with two EOS ids and sampling defaults;
- sentencepiece: Llama's (Metaspace "▁", BPE with byte fallback, BOS added by the
  post-processor), the Llama-2 chat template, generation_config.json with BOS/EOS.

Both are trained on a few sentences with CJK, emoji and accents and a vocabulary small
enough that many characters take several tokens (byte-level pieces or <0xNN> tokens)."""
from __future__ import annotations

import json
import os

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

CORPUS = [
    "Hello world, this is a test of the tokenizer.",
    "Once upon a time there was a dragon 🐉 who loved 日本語 and 中文 books.",
    "Emoji party 🎉🎉 with family 👩‍👩‍👧 at the café, naïve “quotes” — dashes.",
    "数学是科学的语言。 東京は日本の首都です。 한국어도 있습니다.",
    "Numbers 12345 and code: def f(x): return x * 2",
    "The quick brown fox jumps over the lazy dog.\n\nNew paragraph here.",
] * 8

# the chat templates of the families (Qwen2.5's simplified; Llama-2's as published)
CHATML = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
               r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def _write(path: str, name: str, obj) -> None:
    with open(os.path.join(path, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)


def byte_level_tokenizer(vocab_size: int = 420) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    return tok


def sentencepiece_tokenizer(vocab_size: int = 420) -> Tokenizer:
    # train on the Metaspace pipeline, then rebuild a byte-fallback BPE from the result:
    # <unk> <s> </s>, the 256 byte tokens, then the learned pieces (Llama's layout)
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    trained.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, limit_alphabet=70, show_progress=False))
    model = json.loads(trained.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab=model["vocab"], merges=merges, unk_token="<unk>",
                               fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<unk>", "<s>", "</s>")])
    return tok


def byte_level_dir(path: str, chat_template: bool = True) -> str:
    """A Qwen2-like checkpoint's tokenizer files in `path`."""
    os.makedirs(path, exist_ok=True)
    tok = byte_level_tokenizer()
    tok.save(os.path.join(path, "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    config = {
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False,
                                          "rstrip": False, "single_word": False, "special": True}
                                 for t, i in ids.items()}}
    if chat_template:
        config["chat_template"] = CHATML
    _write(path, "tokenizer_config.json", config)
    _write(path, "generation_config.json", {
        "bos_token_id": ids["<|endoftext|>"], "do_sample": True,
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "pad_token_id": ids["<|endoftext|>"],
        "repetition_penalty": 1.05, "temperature": 0.7, "top_k": 20, "top_p": 0.8})
    return path


def sentencepiece_dir(path: str) -> str:
    """A Llama-2-like checkpoint's tokenizer files in `path`."""
    os.makedirs(path, exist_ok=True)
    tok = sentencepiece_tokenizer()
    tok.save(os.path.join(path, "tokenizer.json"))
    _write(path, "tokenizer_config.json", {
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": None, "legacy": False, "add_bos_token": True,
        "add_eos_token": False, "clean_up_tokenization_spaces": False, "chat_template": LLAMA2})
    _write(path, "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "max_length": 4096})
    return path


TEXTS = [
    "Hello world",
    "Once upon a time there was a dragon 🐉 who loved 日本語.",
    "🎉🎉 👩‍👩‍👧 café naïve “quotes” — ok",
    "数学是科学的语言。東京は日本の首都です。한국어",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew lines\n\n",
    "unseen: Ωμέγα ℵ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🦄",
    "special tokens in text: <s> </s> <|im_end|> done",
]

"""Tiny tokenizers in the styles of real model families, built offline with `tokenizers` and
wrapped in transformers' PreTrainedTokenizerFast, with ids simple enough to check by hand.

Byte-level styles (GPT-2, ChatML / Qwen, Llama-3): byte b has id b (its GPT-2 unicode stand-in as
the token), special tokens follow from 256, merges from 300 in the order of ``BYTE_MERGES``.
So "Hi" is [72, 105] and " is" is [304] (Ġ + "is").
SentencePiece style (Mistral): <unk>=0, <s>=1, </s>=2, byte fallbacks <0x00>.. <0xFF> = 3.. 258,
"▁" = 259, printable ASCII character c = 227 + ord(c), merges from 354 in ``SP_MERGES`` order.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

BYTE_MERGES = [("h", "e"), ("Ġ", "t"), ("Ġt", "he"), ("i", "s"), ("Ġ", "is")]  # ids 300..304
SP_MERGES = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("I", "N"), ("IN", "S"), ("INS", "T")]  # 354..359

CHATML_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
MISTRAL_TEMPLATE = (  # Mistral-7B-Instruct-v0.1's template: raises on roles out of order
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _byte_level(specials: list[str], bos: str | None, eos: str, pad: str, template: str | None):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {c: b for b, c in bytes_to_unicode().items()}
    vocab.update({s: 256 + i for i, s in enumerate(specials)})
    for i, (a, b) in enumerate(BYTE_MERGES):
        vocab[a + b] = 300 + i
    core = Tokenizer(models.BPE(vocab, BYTE_MERGES))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if bos is not None:  # Llama-3: the post-processor puts BOS before every text
        core.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, core.token_to_id(bos))])
    else:
        core.post_processor = processors.ByteLevel(trim_offsets=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos, pad_token=pad)
    tok.chat_template = template
    return tok


def gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2 style: byte-level BPE, <|endoftext|> (256) as BOS / EOS, adds nothing, no template."""
    tok = _byte_level(["<|endoftext|>"], None, "<|endoftext|>", "<|endoftext|>", None)
    tok.bos_token = "<|endoftext|>"
    return tok


def chatml_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen style: <|endoftext|>=256, <|im_start|>=257, <|im_end|>=258 (EOS); no BOS; ChatML."""
    return _byte_level(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>",
                       "<|endoftext|>", CHATML_TEMPLATE)


def llama3_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-3 style: <|begin_of_text|>=256 (BOS, added to every text), <|end_of_text|>=257,
    <|start_header_id|>=258, <|end_header_id|>=259, <|eot_id|>=260 (EOS); Llama-3 template."""
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"]
    return _byte_level(specials, "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>", LLAMA3_TEMPLATE)


def mistral_tokenizer() -> PreTrainedTokenizerFast:
    """Mistral style: SentencePiece-like BPE with byte fallback, "▁" for spaces (prepended to the
    text), <s> (BOS, added to every text) and </s> (EOS); Mistral-Instruct's [INST] template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    vocab["▁"] = 259
    vocab.update({chr(c): 227 + c for c in range(33, 127)})
    for i, (a, b) in enumerate(SP_MERGES):
        vocab[a + b] = 354 + i
    core = Tokenizer(models.BPE(vocab, SP_MERGES, unk_token="<unk>", byte_fallback=True))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    core.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ("<unk>", "<s>", "</s>")])
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                        special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="</s>")
    tok.chat_template = MISTRAL_TEMPLATE
    return tok


STYLES = {"gpt2": gpt2_tokenizer, "chatml": chatml_tokenizer, "llama3": llama3_tokenizer,
          "mistral": mistral_tokenizer}

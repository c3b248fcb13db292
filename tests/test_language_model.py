"""The language side of TOD3Cap/MTA: SmolLM2 offline, the zero-initialised gated adapter, LoRA, prompt and
targets, teacher forcing, batched generation with the KV cache and nucleus sampling.

Tiny random Llamas (tests/lm_tiny.py) where the real weights are not the point; the real SmolLM2 (prepared by
``make setup``) where they are."""

from __future__ import annotations

import math

import pytest
import torch

from bevbridge.models.language import smollm2
from bevbridge.models.language.adapter import GatedPromptAdapter, LoRAAdapter
from bevbridge.models.language.conditioned_lm import ConditionedLM, sample_top_p
from bevbridge.models.language.lm import LMInfo, lm_config, load_lm, load_tokenizer
from bevbridge.models.tod3cap.caption_head import caption_loss
from tests.lm_tiny import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def smol():
    return load_lm(None), load_tokenizer(None)


@pytest.fixture()
def tiny():
    tok = tiny_tokenizer()
    return tiny_llama(len(tok)), tok


# ------------------------------------------------------------------------------------------------------ SmolLM2
def test_smollm2_loads_with_the_published_architecture(smol):
    """Would catch: a wrong GGUF -> transformers conversion (another architecture, vocabulary or tying), or the
    prepared config drifting from the built-in copy used on the meta device."""
    lm, tok = smol
    c = lm.config
    assert (c.hidden_size, c.num_hidden_layers, c.vocab_size) == (576, 30, 49152)
    assert (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size) == (9, 3, 1536)
    assert sum(p.numel() for p in lm.parameters()) == 134_515_008  # tied input/output embeddings
    assert lm.get_input_embeddings().weight.data_ptr() == lm.get_output_embeddings().weight.data_ptr()
    assert len(tok) == 49152 and tok.eos_token_id == 2
    for k, v in smollm2.SMOLLM2_CONFIG.items():
        if k not in ("architectures", "rope_theta"):
            assert getattr(c, k) == v, k
    assert c.rope_parameters["rope_theta"] == smollm2.SMOLLM2_CONFIG["rope_theta"]
    assert not hasattr(c, "quantization_config")  # plain float32: loading never dequantises again


def test_smollm2_weights_are_a_working_language_model(smol):
    """Would catch: dequantised weights that load but are garbage (e.g. Q/K rows left in llama.cpp's permuted
    order): the instruct model must still answer a factual question greedily."""
    lm, tok = smol
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt")
    ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    out = lm.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


def test_zero_init_adapter_leaves_smollm2_logits_bitwise_unchanged(smol):
    """Would catch: a gate that is not exactly zero at initialisation, or the prompt term added before the gate."""
    lm, tok = smol
    info = LMInfo(lm.config)
    adapter = GatedPromptAdapter(info, info.num_layers - 1, 10)
    ids = torch.tensor([tok("Below is an instruction that describes a task.")["input_ids"]])
    with torch.no_grad():
        ref = lm(input_ids=ids).logits
        clm = ConditionedLM(lm, adapter, tokenizer=tok)
        try:
            with adapter.condition(torch.randn(1, 10, info.hidden_size) * 10):
                got = lm(input_ids=ids).logits
        finally:
            for h in adapter._handles:
                h.remove()
    assert torch.equal(ref, got) and clm is not None


def test_missing_model_folder_names_the_fix(tmp_path, monkeypatch):
    """Would catch: a silent download attempt or a deep transformers traceback when nothing is prepared."""
    monkeypatch.setenv("BEVBRIDGE_MODELS_DIR", str(tmp_path))
    with pytest.raises(smollm2.LanguageModelMissing, match="make setup"):
        smollm2.ensure(None)
    with pytest.raises(smollm2.LanguageModelMissing, match="not a model folder"):
        smollm2.ensure(tmp_path / "nowhere")
    with torch.device("meta"):  # `bevbridge summary` builds without the folder, from the built-in config
        lm = load_lm(None)
    assert lm.config.num_hidden_layers == 30 and next(lm.parameters()).is_meta


# ------------------------------------------------------------------------------------------------------ adapter
def _adapter_reference(attn, h, cos, sin, prompts, visual, gates) -> torch.Tensor:
    """Float64 reference of one adapted layer's self-attention output by hand: causal GQA attention with RoPE plus
    the LLaMA-Adapter V2 term (own softmax over the prompts, tanh gate per head, no RoPE on the prompts)."""
    from transformers.models.llama.modeling_llama import rotate_half

    W = {n: getattr(attn, n).weight.double() for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    h, cos, sin = h.double(), cos.double()[:, None], sin.double()[:, None]
    B, T, H = h.shape
    nh, d = gates.shape[0], attn.head_dim
    nkv = W["k_proj"].shape[0] // d
    rope = lambda x: x * cos + rotate_half(x) * sin  # noqa: E731
    heads = lambda x, n: x.view(B, -1, n, d).transpose(1, 2)  # noqa: E731
    q = rope(heads(h @ W["q_proj"].t(), nh))
    k = rope(heads(h @ W["k_proj"].t(), nkv)).repeat_interleave(nh // nkv, 1)
    v = heads(h @ W["v_proj"].t(), nkv).repeat_interleave(nh // nkv, 1)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    att = torch.softmax((q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~causal, -math.inf), -1) @ v
    p = prompts.double()[None] + visual.double()  # [B, K, H]
    kp = heads(p @ W["k_proj"].t(), nkv).repeat_interleave(nh // nkv, 1)
    vp = heads(p @ W["v_proj"].t(), nkv).repeat_interleave(nh // nkv, 1)
    gate = torch.tanh(gates.double()).view(1, nh, 1, 1)
    extra = gate * torch.softmax(q @ kp.transpose(-1, -2) / math.sqrt(d), -1) @ vp
    return (att + extra).transpose(1, 2).reshape(B, T, H) @ W["o_proj"].t()


def test_gated_prompt_attention_matches_a_float64_reference(tiny):
    """Would catch: RoPE applied to the prompts' keys, the softmax taken jointly with the token scores (v1's
    variant) or over the wrong axis, gates mixed across heads, key/value heads grouped wrongly."""
    lm, tok = tiny
    info = LMInfo(lm.config)
    adapter = GatedPromptAdapter(info, 2, 3)
    with torch.no_grad():
        adapter.gates.copy_(torch.randn_like(adapter.gates))
    visual = torch.randn(2, 3, info.hidden_size)
    ids = torch.randint(3, len(tok), (2, 7))
    attn = lm.model.layers[info.num_layers - 1].self_attn
    ConditionedLM(lm, adapter, tokenizer=tok)
    got = {}

    def grab(m, args, kwargs, output):  # registered after the adapter's hook: sees the adapted output
        got.update(h=kwargs["hidden_states"], pe=kwargs["position_embeddings"], out=output[0])

    hook = attn.register_forward_hook(grab, with_kwargs=True)
    with torch.no_grad(), adapter.condition(visual):
        lm(input_ids=ids)
    hook.remove()
    with torch.no_grad():
        ref = _adapter_reference(attn, got["h"], *got["pe"], adapter.prompts[-1], visual, adapter.gates[-1])
    torch.testing.assert_close(got["out"].double(), ref, rtol=1e-5, atol=1e-5)
    assert (got["out"].double() - ref).abs().max() < 1e-2 * ref.abs().max()


def test_lora_starts_as_the_plain_lm_and_trains_only_its_factors(tiny):
    """Would catch: LoRA's B not zero-initialised (the LM changes before training), or updates hooked onto the
    wrong projections."""
    lm, tok = tiny
    ids = torch.randint(3, len(tok), (2, 6))
    with torch.no_grad():
        ref = lm(input_ids=ids).logits
    lora = LoRAAdapter(LMInfo(lm.config), rank=4, alpha=8.0, targets=("q_proj", "v_proj"), prefix_len=3)
    ConditionedLM(lm, lora, tokenizer=tok)
    with torch.no_grad():
        assert torch.equal(lm(input_ids=ids).logits, ref)
        for p in lora.lora_B.values():
            p.normal_()
        assert not torch.allclose(lm(input_ids=ids).logits, ref)
    assert len(lora.lora_A) == 2 * lm.config.num_hidden_layers


# ---------------------------------------------------------------------------------------------- prompt + targets
def test_targets_are_caption_tokens_then_eos_and_teacher_forcing_is_shifted(tiny):
    """Would catch: targets not shifted against the inputs (the LM learning to copy), EOS missing (captions that
    never end), or padding counted in the loss."""
    lm, tok = tiny
    adapter = GatedPromptAdapter(LMInfo(lm.config), 2, 3)
    with torch.no_grad():
        adapter.gates.fill_(1.0)
    clm = ConditionedLM(lm, adapter, tokenizer=tok)
    caps = ["a red car is parked .", "the bus"]
    targets, mask = clm.encode_targets(caps, torch.device("cpu"))
    assert targets[0, :6].tolist() == tok(caps[0], add_special_tokens=False)["input_ids"]
    assert targets[0, 6] == tok.eos_token_id and mask[0].all() and mask[1].sum() == 3 and targets[1, 2] == 2
    visual = torch.randn(2, 3, lm.config.hidden_size)
    with torch.no_grad():
        logits = clm.logits(visual, targets)
        prompt = clm.prompt_ids(torch.device("cpu"))
        with adapter.condition(visual[:1]):
            full = lm(input_ids=torch.cat([prompt, targets[0]])[None]).logits[0]
    P = len(prompt)
    torch.testing.assert_close(logits[0], full[P - 1: P - 1 + targets.shape[1]], rtol=1e-5, atol=1e-5)


def test_caption_loss_averages_per_sample_then_over_samples():
    """Would catch: a mean over all tokens of the batch (objects of crowded samples weighing more), padding
    counted, or samples without objects counted as zero."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 11, generator=g)
    targets = torch.randint(0, 11, (3, 4), generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    sample = torch.tensor([0, 0, 2])
    ce = -torch.log_softmax(logits.double(), -1).gather(-1, targets[..., None])[..., 0]
    s0 = (ce[0, :3].sum() + ce[1, :2].sum()) / 5
    s2 = ce[2].mean()
    assert caption_loss(logits, targets, mask, sample, 3).item() == pytest.approx(((s0 + s2) / 2).item(), rel=1e-6)


# --------------------------------------------------------------------------------------------------- generation
def test_cached_batched_generation_equals_step_by_step_recomputation(tiny):
    """Would catch: KV-cache position errors, the adapter's cached prompt keys not following the rows dropped
    when objects finish, or rows of the batch mixed up."""
    lm, tok = tiny
    adapter = GatedPromptAdapter(LMInfo(lm.config), 3, 3)
    with torch.no_grad():
        adapter.gates.fill_(2.0)
    clm = ConditionedLM(lm, adapter, tokenizer=tok)
    visual = torch.randn(5, 3, lm.config.hidden_size) * 3
    free = clm.generate_ids(visual, max_new_tokens=12)
    # declare as EOS a token the rows produce at different steps, so rows finish (and are dropped) at different times
    tokens = {t for row in free for t in row}
    eos = max(sorted(tokens), key=lambda t: len({r.index(t) if t in r else -1 for r in free}))
    tok.eos_token = tok.convert_ids_to_tokens(eos)
    got = clm.generate_ids(visual, max_new_tokens=12)
    assert len({len(x) for x in got}) > 1  # rows did finish at different steps
    prompt = clm.prompt_ids(torch.device("cpu")).tolist()
    for i in range(5):
        seq, ref = list(prompt), []
        with torch.no_grad(), adapter.condition(visual[i: i + 1]):
            for _ in range(12):
                t = int(lm(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
                if t == tok.eos_token_id:
                    break
                ref.append(t)
                seq.append(t)
        assert got[i] == ref, i
    assert len({tuple(x) for x in got}) > 1  # the visual queries matter


def test_nucleus_sampling_keeps_the_top_p_mass():
    """Would catch: the cut-off applied after (not before) the token that crosses top_p, or tail tokens drawn."""
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).expand(4000, 4)
    g = torch.Generator().manual_seed(0)
    draws = sample_top_p(probs, 0.75, g)
    counts = torch.bincount(draws, minlength=4).double() / len(draws)
    assert counts[2:].sum() == 0  # 0.5 + 0.3 >= 0.75: tokens 2 and 3 are outside the nucleus
    assert counts[0].item() == pytest.approx(0.5 / 0.8, abs=0.03)
    assert (sample_top_p(probs[:3], 1e-6, g) == 0).all()  # a tiny nucleus is greedy


# ------------------------------------------------------------------------------------------ loading side effects
def test_loading_a_language_model_leaves_torch_device_contexts_working(tmp_path):
    """Would catch: transformers' from_pretrained (which swaps torch.linspace for a CPU-defaulting wrapper while it
    builds on the meta device) poisoning torch's once-per-process cache of the functions a ``torch.device``
    context redirects, so that ``torch.linspace`` ignored ``with torch.device("meta")`` for the rest of the process
    (BEVFormer's pillar heights then came out on the CPU and `bevbridge summary` of mta.yaml failed whenever a
    language model had been loaded before: the order-dependent failure in tests/test_configs.py)."""
    from torch.utils import _device

    from bevbridge.models.language.text_encoder import TextEncoder
    from tests.lm_tiny import tiny_lm_folder

    folder = tiny_lm_folder(tmp_path / "lm")
    for load in (lambda: load_lm(folder), TextEncoder):
        _device._device_constructors.cache_clear()  # as in a fresh process: the load is the first to fill it
        load()
        with torch.device("meta"):
            assert torch.linspace(0.0, 1.0, 3).device.type == "meta", load
            assert torch.arange(3).device.type == "meta"

"""The frozen text encoder of MTA's BLA (bevbridge/models/language/text_encoder.py)."""

from __future__ import annotations

import torch

from bevbridge.models.language.text_encoder import TextEncoder, default_text_encoder_path

CAPTIONS = ["A blue car parked at the side of the road, about 12 meters away in the front left of the ego car.",
            "There is a pedestrian in purple walking towards the ego car.",
            "An orange traffic cone."]


def test_minilm_embedding_equals_the_sentence_encoders_own_output():
    """Would catch: CLS pooling instead of mean, padding tokens in the mean (batched captions of different
    lengths), or a missing L2 normalisation: the default encoder must be all-MiniLM-L6-v2 exactly."""
    from sentence_transformers import SentenceTransformer

    enc = TextEncoder()
    ours = enc(CAPTIONS)
    theirs = SentenceTransformer(str(default_text_encoder_path()), device="cpu").encode(CAPTIONS,
                                                                                       convert_to_tensor=True)
    assert ours.shape == (3, 384) and enc.dim == 384
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(3))


def test_clip_text_folder_by_local_path(tmp_path):
    """Would catch: a CLIP folder read as a sentence encoder (mean of token states instead of CLIP's projected
    EOS state), or unnormalised CLIP features."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from tests.lm_tiny import tiny_tokenizer

    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, projection_dim=24, eos_token_id=2)
    model = CLIPTextModelWithProjection(cfg).eval()
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    enc = TextEncoder(tmp_path)
    assert enc.kind == "clip" and enc.dim == 24
    tok = enc.tokenizer(CAPTIONS[:1], return_tensors="pt")
    with torch.no_grad():
        ref = model(**tok).text_embeds
    torch.testing.assert_close(enc(CAPTIONS[:1]), ref / ref.norm(dim=-1, keepdim=True))

import torch

from millennial.fingerprint import tensors_sha256


def test_digest_depends_on_content_not_on_insertion_order() -> None:
    a, b = torch.arange(6.0).reshape(2, 3), torch.ones(4, dtype=torch.bfloat16)
    assert tensors_sha256({"a": a, "b": b}) == tensors_sha256({"b": b, "a": a.clone()})
    changed = a.clone()
    changed[1, 2] += 1
    assert tensors_sha256({"a": changed, "b": b}) != tensors_sha256({"a": a, "b": b})
    assert tensors_sha256({"a": a.reshape(3, 2), "b": b}) != tensors_sha256({"a": a, "b": b})
    assert tensors_sha256({"a": a.double(), "b": b}) != tensors_sha256({"a": a, "b": b})
    assert tensors_sha256({"x": a, "b": b}) != tensors_sha256({"a": a, "b": b})

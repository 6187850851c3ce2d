"""Test configuration: nothing in the suite may reach the network."""

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}
# Scratch git repositories (DVC pipelines, `dvc exp run`) commit: give them an identity.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}
for _key, _value in {**OFFLINE_ENV, **GIT_IDENTITY}.items():
    os.environ.setdefault(_key, _value)

# Imports after the environment is set, so no library reads it too early.
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel  # noqa: E402

_LLAMA_LIKE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2)
_TINY = {
    "llama": _LLAMA_LIKE,
    "mistral": {**_LLAMA_LIKE, "sliding_window": None},
    "qwen2": _LLAMA_LIKE,
    "qwen3": {**_LLAMA_LIKE, "head_dim": 8},  # q/k norms
    "gemma2": {**_LLAMA_LIKE, "head_dim": 8},  # sliding/global layers, extra norms, soft-capping
    "phi3": _LLAMA_LIKE,  # fused qkv and gate/up projections
    "olmo2": _LLAMA_LIKE,  # norms after attention and MLP
    "granite": _LLAMA_LIKE,  # residual and logit multipliers
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                     num_attention_heads=4),  # Pythia: LayerNorm with biases, parallel residual
    "falcon": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                   new_decoder_architecture=True, num_kv_heads=2),  # LayerNorm, parallel attn
    "starcoder2": _LLAMA_LIKE,  # LayerNorm and biases everywhere
    "mixtral": {**_LLAMA_LIKE, "num_local_experts": 4, "num_experts_per_tok": 2},  # MoE
    "qwen2_moe": {**_LLAMA_LIKE, "num_experts": 4, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32},
    "gpt2": dict(n_embd=32, n_layer=4, n_head=4, n_positions=128),
}
ARCHITECTURES = tuple(_TINY)


def tiny_causal_lm(architecture: str = "llama", seed: int = 0, vocab: int = 97) -> PreTrainedModel:
    """A tiny random causal LM of a real HF architecture, in eval mode (no downloads)."""
    config = AutoConfig.for_model(
        architecture, vocab_size=vocab, max_position_embeddings=128, pad_token_id=0,
        **_TINY[architecture],
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def counted_flops_per_token(model: torch.nn.Module, train: bool,
                            loss: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
                            ) -> float:
    """FLOPs per token of one forward (train: and backward of `loss(model, ids)`) on a (2, 16)
    batch, counted by FlopCounterMode with attention as countable matmuls (math SDPA)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(1, 97, (2, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            if train:
                loss(model, ids).backward()
            else:
                with torch.no_grad():
                    model(ids)
    return counter.get_total_flops() / ids.numel()


def run_command(args: list[str], cwd: Path, timeout: float = 600
                ) -> subprocess.CompletedProcess[str]:
    """Run a tool (dvc, git, python) with this interpreter's scripts first on PATH; must succeed."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done


def perturb_trm(model: torch.nn.Module, seed: int = 1, std: float = 0.3) -> None:
    """Give every TRM weight random values, so the blocks change the output (up starts at 0)."""
    from millennial.hybrid.injection import trm_named_parameters

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in trm_named_parameters(model).values():
            noise = torch.randn(parameter.shape, generator=generator) * std
            parameter.copy_(noise + (1.0 if parameter.dim() == 1 else 0.0))


@pytest.fixture(params=ARCHITECTURES)
def architecture(request: pytest.FixtureRequest) -> str:
    return request.param


def copy_tree(source: Path, destination: Path) -> Path:
    """A copy of a scratch git+DVC workspace (its git history and DVC cache included)."""
    import shutil

    shutil.copytree(source, destination, symlinks=True)
    return destination


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real pipeline on the tiny profile, run once per test session and committed: a
    git+DVC copy of this repo after `dvc repro`. Tests that run experiments on top of it take a
    copy (`copy_tree`), so the ~2 minutes of the first repro are paid once."""
    from millennial.profiles import apply_profile
    from millennial.workspace import copy_project

    root = tmp_path_factory.mktemp("tiny-reference")
    copy_project(Path(__file__).resolve().parents[1], root)
    apply_profile(root / "profiles/tiny.yaml", root / "params.yaml")

    def commit(message: str) -> None:
        run_command(["git", "add", "-A"], root)
        run_command(["git", "commit", "-qm", message], root)

    run_command(["git", "init", "-q", "-b", "main"], root)
    commit("the project, tiny profile")  # dvclive reads the baseline commit
    run_command([sys.executable, "-m", "dvc", "repro"], root, timeout=1200)
    commit("tiny reference run")
    return root

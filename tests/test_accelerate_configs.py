"""The Accelerate configs shipped under configs/accelerate/ are accepted by Accelerate itself.

Each file goes through what `accelerate launch --config_file FILE` does before it starts any
process: `load_config_from_file` (unknown top-level keys refused), the launcher's merge of the
file into its arguments, and the environment the launcher hands to the workers. Accelerate
copies the keys of `fsdp_config` / `deepspeed_config` onto its arguments without checking
them, so a misspelt key there would be silently ignored: the test refuses any key that is not
one of the launcher's own options. The values are then checked by the plugins the workers
build from that environment (FSDP's strategy names, wrap policy, state-dict type; DeepSpeed's
ZeRO config), and the FSDP wrap class must be found in a (tiny) Llama model. DeepSpeed itself
is not needed for any of this, and it is not installed here: the ZeRO-3 file is checked
up to the point where `accelerate launch` would start `deepspeed`. No GPU either: the
FSDP/ZeRO files are not run, only the 2-process CPU file is, for real.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from argparse import Namespace
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, patch_environment
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"

# file -> (distributed_type, num_processes, mixed_precision)
EXPECTED = {
    "fsdp_7b.yaml": (DistributedType.FSDP, 8, "bf16"),
    "zero3_7b.yaml": (DistributedType.DEEPSPEED, 8, "bf16"),
    "ddp_cpu_2.yaml": (DistributedType.MULTI_GPU, 2, "no"),
}


def launcher_args(path: Path) -> tuple[Namespace, ClusterConfig, set[str]]:
    """What `accelerate launch --config_file PATH train.py` holds after reading the file,
    and the keys of its sections (fsdp_config, deepspeed_config, ...) that are none of the
    launcher's options. Top-level keys are ClusterConfig fields, checked by the loader."""
    parser = launch_command_parser()
    argv = ["--config_file", str(path), "train.py"]
    own = set(vars(parser.parse_args(argv))) | set(ClusterConfig.__dataclass_fields__)
    args, defaults, mp_from_config = _validate_launch_command(parser.parse_args(argv))
    unknown = set(vars(args)) - own
    # as launch_command does before it hands a ZeRO run to the DeepSpeed launcher
    fields = [*defaults.deepspeed_config, *(["mixed_precision"] if mp_from_config else [])]
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    return args, defaults, unknown


def test_every_shipped_config_is_listed() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_accepts_the_file(name: str) -> None:
    path = CONFIGS / name
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#"), f"{name}: starts with a header comment saying what it needs"
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    kind, processes, precision = EXPECTED[name]
    assert (config.distributed_type, config.num_processes) == (kind, processes)
    assert config.mixed_precision == precision
    args, _, unknown = launcher_args(path)
    assert not unknown, f"{name}: keys that are no `accelerate launch` option: {sorted(unknown)}"
    assert args.num_processes == processes and args.num_machines == 1


def test_a_misspelt_key_is_caught(tmp_path: Path) -> None:
    """The check above is real: Accelerate alone swallows a typo inside fsdp_config."""
    raw = yaml.safe_load((CONFIGS / "fsdp_7b.yaml").read_text(encoding="utf-8"))
    raw["fsdp_config"]["fsdp_activation_checkpoiting"] = raw["fsdp_config"].pop(
        "fsdp_activation_checkpointing"
    )
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    load_config_from_file(str(path))  # Accelerate's loader does not notice
    _, _, unknown = launcher_args(path)
    assert unknown == {"fsdp_activation_checkpoiting"}
    raw["fsdp_confg"] = raw.pop("fsdp_config")  # a top-level typo: Accelerate refuses it
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ValueError, match="fsdp_confg"):
        load_config_from_file(str(path))


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


def test_fsdp_plugin_built_from_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import accelerate.utils.dataclasses as plugin_module
    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import ShardingStrategy, StateDictType

    # sync_module_states makes the plugin ask for the current GPU (it only records it for
    # param_init_fn): stand in for one, nothing is placed on it. Accelerate asks through
    # is_cuda_available before 1.16 and get_torch_accelerator_backend since: patch what exists.

    stand_ins = {
        "is_cuda_available": lambda: True,
        "get_torch_accelerator_backend": lambda *args, **kwargs: ("cuda", torch.cuda),
    }
    patched = [name for name in stand_ins if hasattr(plugin_module, name)]
    assert patched, "accelerate no longer asks for a GPU where this test stands in for one"
    for name in patched:
        monkeypatch.setattr(plugin_module, name, stand_ins[name])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    args, _, _ = launcher_args(CONFIGS / "fsdp_7b.yaml")
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    with patch_environment(**env):
        plugin = FullyShardedDataParallelPlugin()  # reads FSDP_* and validates every value
        plugin.set_auto_wrap_policy(tiny_llama())  # the wrap class must exist in a Llama
    assert plugin.fsdp_version == 1
    assert plugin.sharding_strategy == ShardingStrategy.FULL_SHARD  # what FSDP1 wraps with
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.auto_wrap_policy is not None
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT
    assert plugin.activation_checkpointing is True
    assert plugin.use_orig_params is True  # LoRA: frozen and trainable weights in one unit
    assert plugin.cpu_ram_efficient_loading and plugin.sync_module_states


def test_zero3_plugin_built_from_the_file() -> None:
    from accelerate.utils import DeepSpeedPlugin

    args, defaults, _ = launcher_args(CONFIGS / "zero3_7b.yaml")
    assert defaults.deepspeed_config["zero_stage"] == 3
    cmd, env = prepare_deepspeed_cmd_env(args)
    assert cmd is None  # one machine: torchrun starts the workers, not the `deepspeed` CLI
    with patch_environment(**env):
        plugin = DeepSpeedPlugin()  # the ZeRO config the workers hand to deepspeed.initialize
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"]["device"] == "none"
    assert zero["offload_param"]["device"] == "none"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert plugin.zero3_init_flag is True
    assert plugin.deepspeed_config["gradient_clipping"] == 1.0


PROBE = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)  # what forgetlab's make_accelerator builds without CUDA
    total = acc.reduce(torch.tensor([float(acc.process_index + 1)]), "sum")
    # one file per rank: the workers share stdout, so their prints can interleave
    Path(sys.argv[1], f"rank{acc.process_index}.txt").write_text(
        f"{acc.num_processes} {acc.distributed_type.value} {total.item():g}"
    )
    # what a launched script ends with (forgetlab's end_process_group too): without it a
    # rank can abort at exit (SIGABRT) after writing its file
    acc.wait_for_everyone()
    acc.end_training()
    """
)


def _worker_lines(stderr: str) -> str:
    """What the workers said before they died (the launcher's summary says only which
    signal), then the summary's end."""
    said = [line for line in stderr.splitlines() if "terminate" in line or "what()" in line
            or "Error" in line or "error" in line]  # fmt: skip
    return "\n".join(said[-20:]) + "\n" + stderr[-1500:]


def test_ddp_cpu_2_starts_two_gloo_processes(tmp_path: Path) -> None:
    """The CPU file really gives 2 workers that talk over gloo (MULTI_CPU)."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE, encoding="utf-8")
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    cmd += ["--config_file", str(CONFIGS / "ddp_cpu_2.yaml"), str(script), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, _worker_lines(done.stderr)
    seen = {p.name: p.read_text() for p in sorted(tmp_path.glob("rank*.txt"))}
    # both ranks in one process group: the sum of (rank + 1) over it is 1 + 2
    assert seen == {"rank0.txt": "2 MULTI_CPU 3", "rank1.txt": "2 MULTI_CPU 3"}, done.stderr


@pytest.mark.parametrize("key", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_a_sharded_launch_is_refused_until_training_shards(key):
    """Under fsdp_7b.yaml / zero3_7b.yaml `accelerate launch` sets these; forgetlab's loop
    does not hand the model to Accelerate's sharding yet, so it refuses rather than keep a
    whole replica per rank under a config that promises sharding."""
    from forgetlab.errors import ConfigError
    from forgetlab.recipe.data_parallel import refuse_sharded_launch

    with pytest.raises(ConfigError, match="does not shard the model yet"):
        refuse_sharded_launch({key: "true"})
    refuse_sharded_launch({key: "false"})
    refuse_sharded_launch({})

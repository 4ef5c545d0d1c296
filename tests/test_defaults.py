"""Every default is set once, in the configuration that owns it, and the command line reads it from there; every
check lives once too, and reaches the command line as one line in the owner's words (issue 20, point 5)."""
from pathlib import Path

import pytest

import minift
from minift.app.cli import (_given, _inspect_configs, build_parser, compare_config_from_args, default_of,
                            finetune_config_from_args, main, pretrain_config_from_args)
from minift.app.compare import QUICK, CompareConfig, finetune_config
from minift.errors import MiniftError
from minift.lora import LoRAConfig
from minift.measure.lens import InspectConfig
from minift.training.finetune import FinetuneConfig
from minift.generate import generate
from minift.training.pretrain import PretrainConfig


def parsed(*argv):
    return build_parser().parse_args(list(argv))


def test_finetune_with_no_options_is_FinetuneConfig():
    assert finetune_config_from_args(parsed("finetune")) == FinetuneConfig()
    assert (FinetuneConfig().steps, FinetuneConfig().eval_every, FinetuneConfig().lora) == (600, 100, LoRAConfig())
    assert LoRAConfig() == LoRAConfig(r=8, alpha=16, targets="all-linear")
    full = finetune_config_from_args(parsed("finetune", "--method", "full"))
    assert full == FinetuneConfig(method="full") and full.lora is None


def test_lora_alpha_is_2r_unless_given():
    assert LoRAConfig(r=4).alpha == 8 and LoRAConfig(r=4).scale == 2.0 and LoRAConfig(r=4, alpha=3).alpha == 3
    assert finetune_config_from_args(parsed("finetune", "--rank", "4")).lora == LoRAConfig(r=4)
    assert CompareConfig(rank=4).alpha == 8


def test_compare_with_no_options_is_CompareConfig():
    assert compare_config_from_args(parsed("compare")) == CompareConfig()
    assert compare_config_from_args(parsed("compare", "--quick")) == CompareConfig.quick_config()
    quick = CompareConfig.quick_config()
    assert (quick.steps, quick.batch_size, quick.eval_size) == (QUICK["steps"], QUICK["batch_size"], QUICK["eval_size"])
    assert CompareConfig().methods == ("full", "lora", "head")
    assert CompareConfig(task="facts").methods == ("full", "lora")        # a generation task has no head to probe
    assert compare_config_from_args(parsed("compare", "--task", "facts")).methods == ("full", "lora")


def test_compares_runs_are_finetunes_with_finetunes_defaults():
    ccfg = CompareConfig()
    lora = finetune_config(ccfg, "lora", ccfg.rank, ccfg.alpha, "classification")
    assert lora.lora == FinetuneConfig().lora
    assert (lora.steps, lora.batch_size, lora.lr) == (FinetuneConfig().steps, FinetuneConfig().batch_size, None)


def test_pretrain_and_inspect_read_their_owners_defaults():
    assert pretrain_config_from_args(parsed("pretrain")) == PretrainConfig()
    lcfg, tcfg, batch, lr = _inspect_configs(parsed("inspect"))
    assert lcfg == LoRAConfig()
    want = InspectConfig()
    assert (tcfg.steps, tcfg.lr, batch, lr) == (want.steps, want.train_lr, want.batch, want.lr)
    assert _inspect_configs(parsed("inspect", "--steps", "0"))[1] is None


def test_generate_with_no_options_is_generates_own_defaults():
    """`minift generate` passes on only the sampling options given: the rest are generate's signature's, which
    generate_ids shares (one default each)."""
    from minift.generate import MAX_NEW_TOKENS, TEMPERATURE, generate_ids
    assert _given(parsed("generate"), generate) == {}
    assert _given(parsed("generate", "--temperature", "0", "--top-k", "5"), generate) == dict(temperature=0.0, top_k=5)
    for function in (generate, generate_ids):
        assert (default_of(function, "max_new_tokens"), default_of(function, "temperature")) == (MAX_NEW_TOKENS,
                                                                                                  TEMPERATURE)


def test_each_option_names_its_owners_field_once():
    """_owned notes (owner, field) on the parser where the option is added; _given reads the pairs back, so a
    command never writes the mapping again. Every owned option maps to a field its owner has."""
    from minift.training.finetune import FinetuneConfig
    a = parsed("finetune", "--batch", "4", "--head", "new", "--rank", "2", "--targets", "c_attn,mlp.c_fc",
               "--seed", "3")
    assert _given(a, FinetuneConfig) == dict(batch_size=4, head_mode="new", seed=3)
    assert _given(a, LoRAConfig) == dict(r=2, targets=("c_attn", "mlp.c_fc"))        # --targets read by _targets
    assert _given(a, LoRAConfig, r=5)["r"] == 5                                       # a value passed in wins
    for command, parser in build_parser().commands.items():
        for dest, (owner, field, _) in parser.get_default("owned").items():
            default_of(owner, field)                              # raises for a field the owner does not have
            assert any(action.dest == dest for action in parser._actions), (command, dest)


def test_help_shows_the_owners_defaults():
    commands = build_parser().commands

    def help_of(command, option):
        return next(a.help for a in commands[command]._actions if option in a.option_strings)
    assert "default: 600" in help_of("finetune", "--steps")
    assert "default: all-linear" in help_of("finetune", "--targets")
    assert f"default: {LoRAConfig().r}" in help_of("finetune", "--rank")
    assert f"default {CompareConfig().steps} ({QUICK['steps']} with --quick)" in help_of("compare", "--steps")
    assert f"default: {PretrainConfig().steps}" in help_of("pretrain", "--steps")
    assert f"default: {default_of(generate, 'max_new_tokens')}" in help_of("generate", "--max-new-tokens")
    assert f"default: {default_of(generate, 'temperature')}" in help_of("generate", "--temperature")
    assert f"default: {InspectConfig.train_lr}" in help_of("inspect", "--train-lr")


@pytest.mark.parametrize("argv, says", [
    (["finetune", "--lr", "0"], "lr=0.0 must be a positive, finite number (a learning rate)"),
    (["finetune", "--head-lr", "inf"], "head_lr=inf must be a positive, finite number"),
    (["finetune", "--steps", "0"], "steps=0 (--steps) must be positive"),
    (["finetune", "--batch", "-1"], "batch_size=-1 (--batch) must be positive"),
    (["finetune", "--train-size", "0"], "train_size=0 (--train-size) must be positive"),
    (["finetune", "--workers", "0"], "workers=0 must be a positive integer"),
    (["finetune", "--rank", "0"], "LoRA rank r=0 must be an integer > 0"),
    (["finetune", "--alpha", "-2"], "LoRA alpha=-2.0 must be a number > 0"),
    (["finetune", "--lora-dropout", "1"], "LoRA dropout=1.0 must be a number in [0, 1)"),
    (["compare", "--steps", "0"], "the full run: steps=0 (--steps) must be positive"),
    (["compare", "--ranks", "4,0"], "the lora r=0 run: LoRA rank r=0 must be an integer > 0"),
    (["compare", "--lora-lr", "-1"], "the lora r=8 run: lr=-1.0 must be a positive, finite number"),
    (["pretrain", "--lr", "inf"], "lr=inf (--lr) must be a positive, finite number"),
    (["pretrain", "--batch", "0"], "batch_size=0 (--batch) must be positive"),
    (["inspect", "--train-lr", "0"], "lr=0.0 (--train-lr) must be a positive, finite number"),
    (["inspect", "--lr", "nan"], "lr=nan (--lr) must be a positive, finite number"),
    (["inspect", "--rank", "0"], "LoRA rank r=0 must be an integer > 0"),
    (["inspect", "--steps", "-1"], "steps=-1 (--steps) must be >= 0"),
    (["inspect", "--batch", "0"], "batch=0 (--batch) must be positive"),
])
def test_each_check_reaches_the_cli_as_one_line_before_any_work(argv, says, tmp_path, capsys):
    out = [] if argv[0] == "inspect" else ["--out", str(tmp_path / "run")]
    assert main(argv + out) == 1
    err = capsys.readouterr().err
    assert err.startswith("minift: error: ") and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()                 # refused before the output folder was made


@pytest.mark.parametrize("make, argv", [
    (lambda: FinetuneConfig(lr=0.0), ["finetune", "--lr", "0"]),
    (lambda: FinetuneConfig(steps=0), ["finetune", "--steps", "0"]),
    (lambda: LoRAConfig(r=0), ["finetune", "--rank", "0"]),
])
def test_the_library_and_the_cli_say_the_same(make, argv, tmp_path, capsys):
    with pytest.raises(MiniftError) as e:
        make()
    assert main(argv + ["--out", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err.strip() == f"minift: error: {e.value}"


def test_the_learning_rate_rule_is_written_once():
    root = Path(minift.__file__).parent
    where = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if "positive, finite" in p.read_text())
    assert where == ["optim.py"]                             # check_lr: every configuration and the lens call it

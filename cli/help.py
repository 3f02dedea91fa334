"""Help text and command classes: flags shown without a type, option help filled from the registries."""

from __future__ import annotations

from typing import Callable

from typer.core import TyperCommand, TyperGroup


def _flags_without_type(params: list) -> list:
    """Flags take no value: show `--json`, not typer's `--json <bool>` (which reads as if `--json true` worked)."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    return params


def _once_each(parser, ctx):
    """`parser` refusing an option of one value given twice: click keeps the last (`--model mlp --model cnn`
    trained a cnn without a word), where a slip is the likelier reading. Repeatable options are `multiple`."""
    parse = parser.parse_args

    def parse_args(args):
        opts, rest, order = parse(args)
        seen = set()
        for param in order:  # each option in the order given, once per time it was given
            if getattr(param, "multiple", True) or getattr(param, "is_flag", False) or getattr(param, "count", False):
                continue
            if param.name in seen:
                ctx.fail(f"option {param.opts[0]} is given more than once; it takes one value")
            seen.add(param.name)
        return opts, rest, order

    parser.parse_args = parse_args
    return parser


class Command(TyperCommand):
    """Every command's class: help without a type after its flags; an option of one value given once."""

    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))

    def make_parser(self, ctx):
        return _once_each(super().make_parser(ctx), ctx)


class Group(TyperGroup):
    """The app's class: help without a type after its flags; a global option of one value given once."""

    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))

    def make_parser(self, ctx):
        return _once_each(super().make_parser(ctx), ctx)


def with_help_from(choices: dict[str, Callable[[], list]] | None = None,
                   defaults: Callable[[], dict] | None = None) -> type[TyperCommand]:
    """A command class whose `--help` lists each option's registered names and library default.

    `choices` maps an option's parameter name to a function returning the names (a registry's list);
    `defaults` returns parameter name -> default (an options dataclass's fields). Both run only when
    that command's own help is rendered: `toolkit --help` and parsing import no registry, hence no torch.
    """

    class HelpFromLibrary(Command):
        def format_help(self, ctx, formatter):
            given = defaults() if defaults else {}
            for param in self.params:
                if not hasattr(param, "base_help"):  # help rendered twice in one process must not grow
                    param.base_help = param.help or ""
                base, extra = param.base_help, []
                if param.name in (choices or {}):
                    extra.append(f"Choices: {', '.join(map(str, choices[param.name]()))}.")
                default = given.get(param.name)
                if default not in (None, {}, []):
                    shown = ", ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
                    extra.append(f"Default: {shown}.")
                param.help = " ".join([base, *extra]).strip() or None
            return super().format_help(ctx, formatter)

    return HelpFromLibrary


# The built-in names, as the registries hold them once their modules are imported. Those modules import PyTorch
# (2-3 s), which a help page does not need: `--help` lists these, and tests/test_cli.py checks they are the
# registries' names, in order. (A name registered from Python is not known to the command line in any case.)
FAMILIES = ("mlp", "cnn", "lstm")
COMPRESSION_METHODS = ("onnx-fp32", "onnx-fp16", "int8-dynamic", "int8-static", "fp16", "bf16", "int8-weights",
                       "prune-structured", "prune-unstructured", "lowrank", "distill", "auto")
EXPLANATION_METHODS = ("integrated_gradients", "saliency", "deeplift", "gradient_shap", "layer_gradcam", "occlusion",
                       "feature_ablation", "shapley_sampling", "shap_deep", "shap_gradient", "shap_kernel", "shapley",
                       "lime")


def model_families() -> list[str]:
    return list(FAMILIES)


def compression_methods() -> list[str]:
    return list(COMPRESSION_METHODS)


def explanation_methods() -> list[str]:
    return list(EXPLANATION_METHODS)

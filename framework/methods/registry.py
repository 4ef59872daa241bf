"""Which method a job trains, and which method saved a directory: the one place that knows every method.

Every method module (``framework/methods/<name>.py``) defines one ``METHOD = MethodSpec(...)`` that
declares everything about the method: its job class, how its model is built, saved and loaded, how
to recognise a directory it saved, its LightningModule, the MLflow model it is served as, and the
strategies that can train it. The launch and tracking code reach a method only through this module:

    spec = method_for(cfg)               # cfg.METHOD -> the MethodSpec
    model = spec.build_model(cfg, tokenizer)
    module = spec.lightning_module(model, cfg, total_steps)
    spec = method_of_dir(directory)      # the method whose saved directory this is
    model = load_saved_model(directory)  # ... loaded by that method

Methods outside the package (docs/write_a_method.md): a distribution declares an entry point in the
group ``longctx.methods`` whose object is a MethodSpec or a module with ``METHOD``:

    [project.entry-points."longctx.methods"]
    toy = "toy_method"                   # or "toy_method:METHOD"

or code calls ``register_method(spec)`` at run time (seen only by that process: Ray workers find
entry points, so a method trained on a cluster should be an installed entry point).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from framework.methods.mlflow_model import MLflowModel

ENTRY_POINT_GROUP = "longctx.methods"
METHODS = {  # the built-in methods, in the order their saved directories are recognised
    "comet": "framework.methods.comet",
    "swat": "framework.methods.swat",
    "causal_lm": "framework.methods.causal_lm",
    "ram": "framework.methods.ram",
    "comi": "framework.methods.comi",
    "autoencoder": "framework.methods.autoencoder",
    "poc": "framework.methods.poc",
}
DEFAULT_STRATEGIES = ("ddp", "fsdp")
GUIDE = "docs/write_a_method.md"


class UnknownMethodError(ValueError):
    """A job names a method that no module, entry point or register_method call defines."""


class MethodRegistrationError(ValueError):
    """A method cannot be registered: its name is taken, or its entry point does not give a MethodSpec."""


@dataclass(frozen=True)
class MethodSpec:
    """Everything about one method.

    name: the method's name (its job class's METHOD). job: the TrainJob subclass of its config.
    build_model(cfg, tokenizer) -> a fresh model (pretrained weights or random, per cfg.model).
    load_model(directory) -> the model that save_model wrote. save_model(model, directory, tokenizer)
    writes a from_pretrained directory (safetensors and tokenizer files).
    recognizes(directory) -> bool: a pure check (file markers only, nothing loaded) that `directory` is
    one this method saved. fallback: recognizes matches any Hugging Face directory, so it is tried after
    every other method's (the plain causal LM).
    lightning_module(model, cfg, total_steps) -> the LightningModule. validate(cfg) raises ConfigError for
    settings that only this method rules out.
    mlflow_model: how log_and_register logs and serves the saved directory (framework.methods.mlflow_model).
    strategies: the launch.strategy values that can train it; "pipeline" (the layer pipeline over chunks)
    also needs pipeline_chunk(cfg) -> the chunk size the pipeline splits the sequence into."""

    name: str
    job: type
    build_model: Callable
    load_model: Callable
    save_model: Callable
    lightning_module: Callable
    recognizes: Callable | None = None
    fallback: bool = False
    mlflow_model: MLflowModel | None = None
    validate: Callable = lambda cfg: None
    strategies: tuple = DEFAULT_STRATEGIES
    pipeline_chunk: Callable | None = None

    def __post_init__(self) -> None:
        if "pipeline" in self.strategies and self.pipeline_chunk is None:
            raise MethodRegistrationError(f"method {self.name!r} lists the pipeline strategy but gives no "
                                          "pipeline_chunk. Fix: pipeline_chunk=lambda cfg: <its chunk size>")

    @property
    def pipeline(self) -> bool:
        """Whether the layer-pipeline strategy can train it."""
        return "pipeline" in self.strategies

    @property
    def example_input(self) -> str:
        """Python source of an input the registered pyfunc takes, for the hint a recipe prints."""
        return self.mlflow_model.example_input if self.mlflow_model else "['Hello']"


_registered: dict[str, MethodSpec] = {}  # register_method and loaded entry points
_loaded: dict[str, MethodSpec] = {}      # built-in methods, once imported


def _spec_of(obj, where: str) -> MethodSpec:
    spec = getattr(obj, "METHOD", None) if isinstance(obj, ModuleType) else obj
    if not isinstance(spec, MethodSpec):
        raise MethodRegistrationError(f"{where} gives {type(spec).__name__ if spec is not None else 'no METHOD'}, "
                                      "not a MethodSpec. Fix: point the entry point at a module that defines "
                                      f"METHOD = MethodSpec(...), or at the MethodSpec itself ({GUIDE})")
    return spec


def _entry_points() -> dict[str, list]:
    found: dict[str, list] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, []).append(ep)
    return found


def _where(ep) -> str:
    dist = getattr(ep, "dist", None)
    return f"entry point {ep.name} = {ep.value!r}" + (f" of {dist.name}" if dist is not None else "")


def _load_entry_point(name: str, eps: list) -> MethodSpec:
    if len(eps) > 1:
        raise MethodRegistrationError(f"method {name!r} is declared by {len(eps)} entry points in group "
                                      f"{ENTRY_POINT_GROUP!r}: {'; '.join(_where(ep) for ep in eps)}. Fix: uninstall "
                                      "one of them, or rename its entry point and its MethodSpec")
    ep = eps[0]
    if name in METHODS:
        raise MethodRegistrationError(f"{_where(ep)} is named like the built-in method {name!r}. Fix: rename the "
                                      "entry point and its MethodSpec (and the job class's METHOD)")
    spec = _spec_of(ep.load(), _where(ep))
    if spec.name != name:
        raise MethodRegistrationError(f"{_where(ep)} gives the MethodSpec named {spec.name!r}. Fix: name the entry "
                                      "point as the spec (and the job class's METHOD)")
    return spec


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method defined at run time (in this process only; see the module docstring). Registering the same
    spec again does nothing; another spec under a name already taken is an error."""
    if not isinstance(spec, MethodSpec):
        raise MethodRegistrationError(f"register_method takes a MethodSpec, not {type(spec).__name__}. Fix: "
                                      f"register_method(MethodSpec(name=..., job=..., ...)) ({GUIDE})")
    taken = None
    if spec.name in METHODS:
        taken = f"the built-in method {spec.name!r}"
    elif spec.name in _registered and _registered[spec.name] is not spec:
        taken = f"the method {spec.name!r} registered before"
    elif spec.name not in _registered and spec.name in _entry_points():
        taken = f"the method {spec.name!r} of an installed entry point"
    if taken:
        raise MethodRegistrationError(f"cannot register method {spec.name!r}: the name is {taken}. Fix: give the "
                                      "MethodSpec (and its job class's METHOD) another name")
    job_name = getattr(spec.job, "METHOD", None)
    if job_name != spec.name:
        raise MethodRegistrationError(f"method {spec.name!r}: its job class {spec.job.__name__} has METHOD = "
                                      f"{job_name!r}. Fix: set METHOD: ClassVar[str] = {spec.name!r} on the job class")
    _registered[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Forget a method registered at run time (for tests)."""
    _registered.pop(name, None)


def get_method(name: str) -> MethodSpec:
    """The MethodSpec named `name`: a built-in method, one registered at run time, or an entry point's."""
    if name in METHODS:
        if name not in _loaded:
            _loaded[name] = importlib.import_module(METHODS[name]).METHOD
        return _loaded[name]
    if name in _registered:
        return _registered[name]
    eps = _entry_points()
    if name in eps:
        _registered[name] = _load_entry_point(name, eps[name])
        return _registered[name]
    known = sorted(set(METHODS) | set(_registered) | set(eps))
    raise UnknownMethodError(f"unknown method {name!r}; longctx has {known}. Fix: set METHOD on the job class to one "
                             f"of them, or define the method and register it: an entry point in group "
                             f"{ENTRY_POINT_GROUP!r} of an installed distribution, or register_method(spec) ({GUIDE})")


def method_for(cfg) -> MethodSpec:
    """The MethodSpec of a job config (its class's METHOD)."""
    return get_method(type(cfg).METHOD)


def all_methods() -> list[MethodSpec]:
    """Every method: the built-in ones, then those registered at run time, then the entry points'."""
    names = list(METHODS) + [n for n in _registered if n not in METHODS]
    names += [n for n in _entry_points() if n not in names]
    return [get_method(n) for n in names]


def method_of_dir(directory) -> MethodSpec | None:
    """The method that saved `directory` (the first whose recognizes holds, the fallback ones last), else None."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return None
    specs = [s for s in all_methods() if s.recognizes is not None]
    for spec in [s for s in specs if not s.fallback] + [s for s in specs if s.fallback]:
        if spec.recognizes(directory):
            return spec
    return None


def find_model_dir(root: str) -> str:
    """The saved model under `root`: the shallowest directory a method recognises by its own marker (a CoMeT,
    compressor or autoencoder directory, whose subfolders may look like Hugging Face models too), else the
    shallowest plain Hugging Face model directory."""
    from framework.models.loading import walk_model_dirs

    specs = [s for s in all_methods() if s.recognizes is not None]
    own = [s.recognizes for s in specs if not s.fallback]
    plain = [s.recognizes for s in specs if s.fallback]
    return walk_model_dirs(root, lambda d: any(check(d) for check in own),
                           lambda d: any(check(d) for check in plain))


def load_saved_model(directory: str, **load_kwargs):
    """Whatever a longctx method saved in `directory`, loaded by that method's load_model."""
    spec = method_of_dir(directory)
    if spec is None:
        raise FileNotFoundError(f"{directory} holds no model a longctx method saved (no method recognises it: "
                                f"{[s.name for s in all_methods()]}). Fix: point at a directory written by a "
                                "method's save_model (model.save_pretrained)")
    return spec.load_model(directory, **load_kwargs) if load_kwargs else spec.load_model(directory)

"""Sequential: a stack of layers with Keras' compile / fit / evaluate / predict."""

import functools
import math

import numpy as np

from . import callbacks as callbacks_module
from . import inputs, losses, optim
from .backend import resolve_backend
from .dist.strategy import LocalStrategy
from .dist.strategy import get as get_strategy
from .epoch_sums import EpochSums, RunningMeans
from .errors import ConfigError, choose, fraction, positive_int
from .layers import Dropout, Layer
from .metrics import METRICS
from .metrics import get as get_metric
from .parameters import FlatParameters
from .workspace import Workspace

# independent random streams drawn from the model's seed
INIT_STREAM, SHUFFLE_STREAM, DROPOUT_STREAM = 0, 1, 2
DTYPES = ("float32", "float64")


class Sequential:
    """A linear stack of layers, trained on one process (strategies spread it over MPI).

    `seed` fixes initial weights, shuffling and dropout: the same seed gives bit-identical
    results. `dtype` is float32 (default) or float64. `backend` names a backend plugin.
    """

    def __init__(self, layers=None, name: str = "sequential", *, seed: "int | None" = None,
                 dtype: str = "float32", backend="numpy"):
        choose("dtype", str(np.dtype(dtype)), DTYPES)
        self.name = name
        self.dtype = np.dtype(dtype)
        self.seed = int(np.random.SeedSequence().entropy % 2**32) if seed is None else int(seed)
        self.backend = resolve_backend(backend)
        self.layers: list[Layer] = []
        self.params: FlatParameters | None = None
        self.optimizer = self.loss = None
        self.metrics: list = []
        self._metric_specs: list = []
        self.stop_training = False
        self.history = None
        # (epoch, steps done in it) that the parameters hold while fit runs; None between
        # an epoch's last step and its record (validation), and while serving
        self.position = None
        for layer in layers or []:
            self.add(layer)

    # ----------------------------------------------------------------- structure
    def add(self, layer: Layer) -> None:
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add expects a Layer, got {layer!r}")
        if self.built:
            raise ConfigError(f"cannot add {layer!r}: model {self.name!r} is already built")
        names = {existing.name for existing in self.layers}
        if layer.name is None:
            count = sum(existing.kind == layer.kind for existing in self.layers)
            layer.name = f"{layer.kind}_{count}"
        if layer.name in names:
            raise ConfigError(f"layer name {layer.name!r} is used twice in model {self.name!r}")
        if not layer.name.isprintable() or not 0 < len(layer.name) <= 64 or "/" in layer.name:
            raise ConfigError(f"layer name {layer.name!r}: use 1 to 64 printable characters "
                              "without '/' (it names the layer's tensors in checkpoints)")
        self.layers.append(layer)

    @property
    def built(self) -> bool:
        return self.params is not None

    @property
    def input_dim(self) -> "int | None":
        return self.layers[0].input_dim if self.layers else None

    @property
    def output_dim(self) -> int:
        return self.layers[-1].output_dim

    def build(self, input_dim: "int | None" = None) -> None:
        """Create the parameters (in one flat buffer) and draw their initial values."""
        if self.built:
            return
        if not self.layers:
            raise ConfigError(f"model {self.name!r} has no layers")
        input_dim = input_dim or self.input_dim
        if input_dim is None:
            raise ConfigError(
                f"model {self.name!r} does not know its input width: give the first layer "
                "input_shape=(n,) or input_dim=n, or call fit/predict with data"
            )
        shapes, owners, width = {}, {}, input_dim
        for layer in self.layers:
            for local, shape in layer.build(width, self.backend, self.dtype).items():
                shapes[f"{layer.name}/{local}"] = shape
                owners[f"{layer.name}/{local}"] = (layer, local)
            width = layer.output_dim
        params = FlatParameters(shapes, self.dtype, self.backend)
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(INIT_STREAM,)))
        for name in params.names:
            layer, local = owners[name]
            initial = layer.initializers()[local](rng, params.values[name].shape)
            params.values[name][...] = self.backend.asarray(initial, dtype=self.dtype)
        self._bind(params)
        self.seed_dropout()
        # a layer needs dL/d(input) only if some layer before it has parameters
        self._input_grad = [
            any(earlier.values for earlier in self.layers[:i]) for i in range(len(self.layers))
        ]
        self._workspace = Workspace(self.backend.xp, self.dtype)
        self.params = params
        if self.optimizer is not None:
            self._prepare_training()

    def _bind(self, params) -> None:
        """Point the layers (and the regularizers) at `params`' named views."""
        for layer in self.layers:
            prefix = f"{layer.name}/"
            layer.bind(
                {n[len(prefix):]: v for n, v in params.values.items() if n.startswith(prefix)},
                {n[len(prefix):]: g for n, g in params.grads.items() if n.startswith(prefix)},
            )
        self._layer_penalties = [[(reg, layer.values[name], layer.grads[name])
                                  for name, reg in layer.regularizers().items()]
                                 for layer in self.layers]
        self._penalties = [penalty for layer in self._layer_penalties for penalty in layer]

    def swap_buffers(self, data=None, grad=None) -> tuple:
        """Train on `data` and/or `grad` (flat buffers laid out like the parameters) from
        now on and return the (data, grad) they replace: a strategy's double buffering,
        e.g. parameters received while the model computed on the others, without copies."""
        old = self.params.data, self.params.grad
        self.params.use(data, grad)
        self._bind(self.params)
        return old

    def seed_dropout(self, key: tuple = ()) -> None:
        """Draw the Dropout masks from the model's seed and `key` from now on. Training
        draws from one stream per layer (key ()); reproducible training keys each chunk
        of a batch (epoch, step, chunk), so that a mask does not depend on which rank, or
        how many, compute it."""
        for index, layer in enumerate(self.layers):
            if isinstance(layer, Dropout):
                seed = np.random.SeedSequence(self.seed,
                                              spawn_key=(DROPOUT_STREAM, index, *key))
                layer.rng = self.backend.rng(seed)

    def reseed(self, seed: int) -> None:
        """Shuffle and drop out from `seed` from now on; the weights stay. Data-parallel
        ranks take rank 0's seed this way (and its weights from the strategy's setup)."""
        self.seed = int(seed)
        if self.built:
            self.seed_dropout()

    def planned_parameters(self, input_dim: int) -> int:
        """How many parameters `build(input_dim)` would allocate (allocating nothing)."""
        count, width = 0, input_dim
        for layer in self.layers:
            shapes = layer.build(width, self.backend, self.dtype)
            count += sum(math.prod(shape) for shape in shapes.values())
            width = layer.output_dim
        return count

    def count_params(self) -> int:
        self.build()
        return self.params.size

    def summary(self, print_fn=print) -> None:
        self.build()
        rows = [("Layer (type)", "Output Shape", "Param #")]
        for layer in self.layers:
            count = sum(int(v.size) for v in layer.values.values())
            rows.append((f"{layer.name} ({type(layer).__name__})",
                         f"(None, {layer.output_dim})", f"{count:,}"))
        widths = [max(len(row[i]) for row in rows) + 2 for i in range(3)]
        rule = "-" * sum(widths)
        print_fn(f'Model: "{self.name}"')
        print_fn(rule)
        for i, row in enumerate(rows):
            print_fn("".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
            if i == 0:
                print_fn(rule)
        print_fn(rule)
        print_fn(f"Total params: {self.params.size:,} ({self.dtype})")

    # ------------------------------------------------------------------ weights
    def get_weights(self) -> list[np.ndarray]:
        """Host copies of the weights, layer by layer (kernel then bias), as in Keras."""
        self.build()
        return [self.backend.to_numpy(layer.values[key]).copy()
                for layer in self.layers for key in layer.weight_order]

    def set_weights(self, weights) -> None:
        self.build()
        slots = [(layer, key) for layer in self.layers for key in layer.weight_order]
        if len(weights) != len(slots):
            raise ConfigError(
                f"set_weights: model {self.name!r} has {len(slots)} weight arrays, "
                f"received {len(weights)}"
            )
        for (layer, key), value in zip(slots, weights, strict=True):
            target = layer.values[key]
            value = inputs.array(value)
            if value.shape != target.shape:
                raise ConfigError(
                    f"set_weights: {layer.name}/{key} has shape {target.shape}, "
                    f"received {value.shape}"
                )
            target[...] = self.backend.asarray(value, dtype=self.dtype)

    # ------------------------------------------------------------------ training
    def compile(self, optimizer="rmsprop", loss=None, metrics=None) -> None:
        if loss is None:
            raise ConfigError(f"compile: model {self.name!r} needs a loss; allowed: "
                              f"{', '.join(sorted(losses.LOSSES))}")
        self.optimizer = optim.get(optimizer)
        self.loss = losses.get(loss)
        if isinstance(metrics, str):
            metrics = [metrics]
        self._metric_specs = list(metrics or [])
        for spec in self._metric_specs:
            if isinstance(spec, str):
                choose("metric", spec, METRICS)
        if self.built:
            self._prepare_training()

    def _prepare_training(self) -> None:
        last = self.layers[-1]
        activation = getattr(last, "activation", None)
        activation_name = activation.name if activation is not None else "linear"
        self.metrics = [get_metric(spec, self.loss, activation_name, self.output_dim)
                        for spec in self._metric_specs]
        # cross-entropy after its own activation: work from the logits (exact, stable)
        self._fused = (not self.loss.from_logits
                       and self.loss.fused_activation == activation_name)
        if hasattr(last, "keep_logits"):
            last.keep_logits = self._fused
        self.optimizer.build(self.params)

    def _require_compiled(self, caller: str) -> None:
        if self.loss is None:
            raise ConfigError(f"{caller}: compile the model first (model.compile(...))")

    def _forward(self, x, training: bool):
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def _loss_and_output_grad(self, x, y, training: bool):
        """Forward pass, mean loss (with regularization) and dL/d(output) in a work array."""
        out = self._forward(x, training)
        grad = self._workspace.get("loss_grad", len(out), self.output_dim)
        if self._fused:
            loss = self.loss.logits_value_and_grad(y, self.layers[-1].logits, out, grad)
        else:
            loss = self.loss.value_and_grad(y, out, grad)
        if self._penalties:
            loss += float(sum(reg.loss(weights) for reg, weights, _ in self._penalties))
        return loss, out, grad

    def compute_gradients(self, x, y, scale: float = 1.0, layer_done=None):
        """Forward and backward on one batch: fills `params.grad` with `scale` times the
        gradient of the mean loss; returns (loss, output). `layer_done(index)`, if given,
        hears of each layer whose gradients are complete, last layer first (a strategy
        that sends them while the layers below compute).

        Data-parallel training passes scale = (this batch's samples) / (global batch), so
        that the gradients of all ranks sum to the global batch's mean gradient. The
        scaling costs nothing: backward is linear in dL/d(output), a (batch, units) array.
        A loss of NaN or Inf, where the optimizer skips such steps, gives a gradient of
        NaN throughout, so that every rank of a data-parallel step skips it.
        """
        loss, out, dy = self._loss_and_output_grad(x, y, training=True)
        if self.optimizer is not None and self.optimizer.skip_nonfinite and not math.isfinite(
                loss):
            dy[...] = math.nan
        if scale != 1.0:
            dy *= scale
        last = len(self.layers) - 1
        for index in range(last, -1, -1):
            layer, input_grad = self.layers[index], self._input_grad[index]
            options = {"from_logits": True} if index == last and self._fused else {}
            if layer.grads:  # its gradients are complete before its input gradient
                options["params_done"] = functools.partial(self._params_done, index, scale,
                                                           layer_done)
            dy = layer.backward(dy, input_grad, **options)
        return loss, out

    def _params_done(self, index: int, scale: float, layer_done) -> None:
        for reg, weights, grad in self._layer_penalties[index]:
            reg.add_gradient(weights, grad, scale)
        if layer_done is not None:
            layer_done(index)

    def train_on_batch(self, x, y):
        """One optimizer step on one batch; returns the loss before the step."""
        self._require_compiled("train_on_batch")
        x, y = self._checked(x, y)
        loss, _ = self.compute_gradients(x, y)
        self.optimizer.apply(self.params)
        return loss

    def _checked(self, x, y, name_x="x", name_y="y"):
        """Validate and convert arrays for this model; builds it on first use."""
        x = inputs.features(x, self.input_dim, name_x, f"layer {self.layers[0].name!r}")
        self.build(x.shape[1])
        y = inputs.targets(y, self.loss, self.output_dim, repr(self.layers[-1].name),
                           len(x), name_y, name_x)
        xb = self.backend.asarray(x, dtype=self.dtype)
        yb = self.backend.asarray(y, dtype=None if self.loss.sparse else self.dtype)
        return xb, yb

    def fit(self, x, y, batch_size: int = 32, epochs: int = 1, verbose="auto",
            callbacks=None, validation_split: float = 0.0, validation_data=None,
            shuffle: bool = True, initial_epoch: int = 0, initial_step: int = 0,
            strategy=None):
        """Train for `epochs` passes over (x, y); returns a History of per-epoch logs.

        `strategy` spreads training over the processes of an MPI job: a name ("allreduce",
        "ps"; `mpinn.strategy(name, **options)` for options) or a Strategy. Every process
        calls fit with the same data, takes rank 0's seed and weights, and trains its shard
        of each global batch of `batch_size` samples; rank 0 alone shows progress. In a
        world of one, a named strategy is plain training.
        `initial_epoch` and `initial_step` continue a run (a resumed checkpoint): the
        first epoch skips the global batches already trained. A History among the
        callbacks (e.g. one holding the earlier epochs) is used instead of a new one."""
        self._require_compiled("fit")
        if isinstance(strategy, str):
            strategy = get_strategy(strategy)
        strategy = strategy or LocalStrategy()
        batch_size = positive_int("fit", "batch_size", batch_size)
        epochs = positive_int("fit", "epochs", epochs)
        verbose = _verbosity(verbose)
        validation_split = fraction("fit", "validation_split", validation_split)
        if validation_split and validation_data is None:
            # as in Keras: the last samples, taken before any shuffling
            x, y = inputs.array(x), inputs.array(y)
            split_at = int(len(x) * (1 - validation_split))
            if not 0 < split_at < len(x):
                raise ConfigError(f"fit: validation_split={validation_split} leaves "
                                  f"{split_at} of {len(x)} samples for training")
            validation_data = (x[split_at:], y[split_at:])
            x, y = x[:split_at], y[:split_at]
        x, y = self._checked(x, y)
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ConfigError("fit: validation_data must be a pair (x_val, y_val)")
            validation = self._checked(*validation_data, "x_val", "y_val")
        if strategy.size > 1:
            x_val, y_val = validation if validation_data is not None else (None, None)
            strategy.agree(self, {"x": x, "y": y, "x_val": x_val, "y_val": y_val}, {
                "batch_size": batch_size, "epochs": epochs, "initial_epoch": initial_epoch,
                "initial_step": initial_step, "shuffle": bool(shuffle),
                "model": [f"{slot.name}{list(slot.shape)} {self.dtype}"
                          for slot in self.params.slots]})
        strategy.setup(self)
        given = [hook for hook in callbacks or [] if isinstance(hook, callbacks_module.History)]
        self.history = given[0] if given else callbacks_module.History()
        # the History first: an epoch is on record before any hook may wait on another rank
        hooks = [self.history, *(hook for hook in callbacks or [] if hook is not self.history)]
        if verbose and strategy.rank == 0:
            mode = "auto" if verbose == 1 else "lines"
            steps = strategy.progress_steps(-(-len(x) // batch_size))
            hooks.append(callbacks_module.ProgressLogger(mode, epochs, len(x), batch_size,
                                                         steps=steps))
        for hook in hooks:
            hook.set_model(self)
        # only hooks that look at batches get the running figures (a dict per step)
        batch_hooks = [hook for hook in hooks if type(hook).on_train_batch_end
                       is not callbacks_module.Callback.on_train_batch_end]
        self.stop_training = False
        for hook in hooks:
            hook.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            for hook in hooks:
                hook.on_epoch_begin(epoch)
            skip = initial_step if epoch == initial_epoch else 0
            logs = self._train_epoch(x, y, batch_size, shuffle, epoch, batch_hooks, strategy,
                                     skip)
            if validation_data is not None:
                strategy.at((epoch, "validation"))
                val = self._evaluate_checked(*validation, batch_size, strategy)
                logs.update({f"val_{key}": value for key, value in val.items()})
            strategy.at((epoch, "end"))
            self.history.on_epoch_end(epoch, logs)
            self.position = (epoch + 1, 0)
            for hook in hooks[1:]:
                hook.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        strategy.finish(self)
        for hook in hooks:
            hook.on_train_end()
        return self.history

    def epoch_order(self, samples: int, epoch: int) -> np.ndarray:
        """The shuffled sample order of `epoch`: a function of (seed, epoch) alone."""
        seed = np.random.SeedSequence(self.seed, spawn_key=(SHUFFLE_STREAM, epoch))
        return np.random.default_rng(seed).permutation(samples)

    def _train_epoch(self, x, y, batch_size, shuffle, epoch, batch_hooks, strategy,
                     skip: int) -> dict:
        samples = len(x)
        sums = EpochSums(self.metrics, self.optimizer.skip_nonfinite, strategy.exact_sums)
        if strategy.serves:
            self.position = None
            strategy.at((epoch, "serving"))
            strategy.serve_epoch(self, -(-samples // batch_size), batch_hooks)
        else:
            self._train_steps(x, y, batch_size, shuffle, epoch, batch_hooks, strategy, sums,
                              skip)
        strategy.end_epoch(self)
        return sums.reduced(strategy)

    def _train_steps(self, x, y, batch_size, shuffle, epoch, batch_hooks, strategy,
                     sums, skip) -> None:
        samples = len(x)
        order = self.backend.asarray(self.epoch_order(samples, epoch)) if shuffle else None
        steps = -(-samples // batch_size)
        self.position = (epoch, skip) if strategy.lockstep else None
        for step, start in enumerate(range(skip * batch_size, samples, batch_size), skip):
            strategy.at((epoch, step))
            stop = min(start + batch_size, samples)
            low, high = strategy.train_shard(stop - start)
            low, high = start + low, start + high
            if high > low:
                if order is None:
                    xb, yb = x[low:high], y[low:high]
                else:
                    index = order[low:high]
                    xb = self.backend.take_rows(
                        x, index, self._workspace.get("x_batch", high - low, x.shape[1]))
                    yb = y[index]
                scale = strategy.gradient_scale(high - low, stop - start)
                strategy.compute_gradients(self, xb, yb, scale, sums)
            else:
                self.params.grad[...] = 0
            strategy.apply_gradients(self, high - low, stop - start)
            if strategy.lockstep:
                self.position = (epoch, step + 1) if step + 1 < steps else None
            if batch_hooks:
                logs = RunningMeans(sums)
                for hook in batch_hooks:
                    hook.on_train_batch_end(step, logs)

    def _evaluate_checked(self, x, y, batch_size, strategy=None) -> dict:
        """Loss and metrics over (x, y); with a strategy, each rank takes its shard."""
        strategy = strategy or LocalStrategy()
        sums = EpochSums(self.metrics, exact=strategy.exact_sums)
        for start, stop in strategy.evaluation_batches(len(x), batch_size):
            loss, out, _ = self._loss_and_output_grad(x[start:stop], y[start:stop],
                                                      training=False)
            sums.add(loss, out, y[start:stop])
        return sums.reduced(strategy)

    def evaluate(self, x, y, batch_size: int = 32, verbose=0, return_dict: bool = False):
        """Loss (and metrics) over (x, y), in inference mode."""
        self._require_compiled("evaluate")
        batch_size = positive_int("evaluate", "batch_size", batch_size)
        logs = self._evaluate_checked(*self._checked(x, y), batch_size)
        if _verbosity(verbose):
            print(callbacks_module.format_logs(logs))
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x, batch_size: int = 32, verbose=0) -> np.ndarray:
        """Model outputs for `x` as a host array, computed in inference mode."""
        batch_size = positive_int("predict", "batch_size", batch_size)
        x = inputs.features(x, self.input_dim, "x", f"layer {self.layers[0].name!r}")
        self.build(x.shape[1])
        x = self.backend.asarray(x, dtype=self.dtype)
        outputs = [self.backend.to_numpy(self._forward(x[start:start + batch_size], False)).copy()
                   for start in range(0, len(x), batch_size)]
        return np.concatenate(outputs)

    def save(self, path) -> None:
        """Write the model (architecture, weights, optimizer state) to an HDF5 checkpoint;
        `mpinn.load_model(path)` reads it back."""
        from . import checkpoint
        from .saving import model_job_text

        self.build()
        history = self.history.history if self.history is not None else {}
        checkpoint.save(path, self, epoch=len(next(iter(history.values()), [])),
                        history=history, config=model_job_text(self))

    def __call__(self, x) -> np.ndarray:
        return self.predict(x, batch_size=max(len(x), 1))


def _verbosity(verbose) -> int:
    if verbose == "auto":
        return 1
    choose("verbose", verbose, (0, 1, 2))
    return verbose

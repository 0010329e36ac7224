"""diffusers adapter: diffusion sampling from a data set with no trained network.

:class:`DiscoScoreModel` is a diffusers model (``ModelMixin``, ``ConfigMixin``) whose "network"
is an estimator fitted to a data set: at noise level ``sigma`` it answers with the score of the
data distribution convolved with ``N(0, sigma^2 I)`` (``oracle.smoothed(sigma).score``), converted
to whatever the scheduler expects. Any stock scheduler then samples from the data distribution.
:class:`EmpiricalDiffusionPipeline` is the pipeline for (n, d) tabular data (the stock pipelines
assume images)::

    from diffusers import DDIMScheduler
    from disco_score import KDE
    from disco_score.integrations.diffusers import DiscoScoreModel, EmpiricalDiffusionPipeline

    pipe = EmpiricalDiffusionPipeline(DiscoScoreModel(KDE(), data), DDIMScheduler(clip_sample=False))
    out = pipe(num_samples=1000, num_inference_steps=50, generator=torch.Generator().manual_seed(0))
    out.samples  # (1000, d) tensor

Conversions (``s_sigma`` is the smoothed oracle's score, ``x`` the model input):

* Variance-preserving schedulers (DDPMScheduler, DDIMScheduler and the other schedulers built on
  ``alphas_cumprod``): ``x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps`` is ``sqrt(abar)`` times the
  variance-exploding ``y = x_0 + sigma' eps`` with ``sigma' = sqrt((1 - abar) / abar)``, so
  ``score_t(x) = s_sigma'(x / sqrt(abar)) / sqrt(abar)``; ``epsilon = -sqrt(1 - abar) score_t =
  -sigma' s_sigma'(y)``, ``sample = y + sigma'^2 s_sigma'(y)`` (Tweedie) and
  ``v_prediction = sqrt(abar) epsilon - sqrt(1 - abar) sample``.
* EulerDiscreteScheduler: the same model. Its ``scale_model_input`` divides by
  ``sqrt(sigma^2 + 1)``, which is exactly the variance-preserving input, and its sigmas are
  ``sigma'``; fractional timesteps map to sigma by the scheduler's own interpolation.
* ScoreSdeVeScheduler: the model output is the score itself, and (as in diffusers'
  ``ScoreSdeVePipeline``) the "timestep" passed to the model is the noise level sigma.

The model learns the timestep -> noise-level map from the scheduler through
:meth:`DiscoScoreModel.configure_for` (the pipeline calls it on every run, so swapping
``pipe.scheduler`` just works). Smoothed oracles are cached per noise level.
"""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from disco_score._checks import ArrayLike, as_samples, check_int
from disco_score.base import Estimator, Oracle
from disco_score.defaults import default_estimator
from disco_score.samplers import NoiseConditionalScore, noise_range

from . import require

require("diffusers", "diffusers")

from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin, ScoreSdeVeScheduler  # noqa: E402
from diffusers.utils import BaseOutput  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["DiscoScoreModel", "DiscoScoreModelOutput", "EmpiricalDiffusionPipeline", "EmpiricalDiffusionOutput"]

_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "score")


@dataclass
class DiscoScoreModelOutput(BaseOutput):
    """Output of :meth:`DiscoScoreModel.forward` (the ``UNet2DOutput`` convention).

    Attributes:
        sample: the prediction, shaped like the model input; what it is (noise, clean sample,
            velocity or score) is ``model.config.prediction_type``.
    """

    sample: torch.Tensor


@dataclass
class EmpiricalDiffusionOutput(BaseOutput):
    """Output of :class:`EmpiricalDiffusionPipeline`.

    Attributes:
        samples: (num_samples, d) generated points: a torch tensor (``output_type="pt"``) or a
            numpy array (``"np"``), in the data's dtype.
    """

    samples: torch.Tensor | np.ndarray


class DiscoScoreModel(ModelMixin, ConfigMixin):
    """A training-free diffusion "network": the noise-conditional score of a fitted estimator.

    Args:
        estimator: an :class:`~disco_score.base.Estimator` (fitted to ``data`` on first use), a
            fitted :class:`~disco_score.base.Oracle` (used as is; ``data`` is then optional), or
            None for :func:`~disco_score.defaults.default_estimator`.
        data: (n, d) samples, kept as the registered buffer ``data`` (so ``.to(device)`` and
            ``save_pretrained`` carry them). Required unless ``estimator`` is an Oracle.
        dim: data dimension; only needed when neither ``data`` nor an Oracle gives it (loading).
        num_data, data_dtype: number of data points and their dtype; set from ``data`` (used to
            allocate the buffer when loading).
        noise_schedule, prediction_type, num_train_timesteps, sigma_interpolation: set by
            :meth:`configure_for` from a scheduler; not meant to be passed by hand.

    ``save_pretrained`` stores the data and this configuration but not the estimator:
    ``DiscoScoreModel.from_pretrained(path, estimator=KDE())`` restores it (without ``estimator=``
    the default estimator is used).
    """

    ignore_for_config = ["data"]  # the estimator is never in the config but may be passed to from_pretrained

    def __init__(self, estimator: Estimator | Oracle | None = None, data: ArrayLike | None = None,
                 dim: int | None = None, num_data: int = 0, noise_schedule: str | None = None,
                 prediction_type: str = "epsilon", num_train_timesteps: int = 0,
                 sigma_interpolation: str = "linear", data_dtype: str = "float32") -> None:
        super().__init__()
        # Registered by hand, not with @register_to_config: that decorator maps positional
        # arguments onto the config names with the ignored ones (estimator, data) skipped.
        self.register_to_config(noise_schedule=noise_schedule, prediction_type=prediction_type,
                                num_train_timesteps=num_train_timesteps, sigma_interpolation=sigma_interpolation)
        if estimator is not None and not isinstance(estimator, (Estimator, Oracle)):
            raise TypeError(f"estimator must be an Estimator, a fitted Oracle or None; got {type(estimator).__name__}")
        fixed_oracle = estimator if isinstance(estimator, Oracle) else None
        if data is not None:
            tensor = as_samples(data, "data").detach().clone()
        elif dim is not None and num_data > 0:  # being loaded: the buffer is filled from the checkpoint
            tensor = torch.zeros(num_data, check_int(dim, "dim"), dtype=getattr(torch, data_dtype))
        elif fixed_oracle is not None:
            tensor = torch.zeros(0, fixed_oracle.dim, dtype=fixed_oracle.compute_dtype)
        else:
            raise ValueError("DiscoScoreModel needs data (n, d) to fit the estimator on, or a fitted Oracle")
        if fixed_oracle is not None and tensor.shape[1] != fixed_oracle.dim:
            raise ValueError(f"data has dimension {tensor.shape[1]} but the oracle was fitted on "
                             f"{fixed_oracle.dim}-dimensional samples")
        self.register_buffer("data", tensor)
        self.register_buffer("train_sigmas", torch.zeros(num_train_timesteps, dtype=torch.float64))
        self.register_to_config(dim=int(tensor.shape[1]), num_data=int(tensor.shape[0]),
                                data_dtype=str(tensor.dtype).removeprefix("torch."))
        self.estimator = default_estimator() if estimator is None else estimator
        self._fixed_oracle = fixed_oracle
        self._noise: NoiseConditionalScore | None = None
        self._noise_key: tuple[Any, ...] | None = None

    # -- the fitted oracle, refitted when the data buffer changes (device, dtype, loading) ---------
    @property
    def noise_conditional(self) -> NoiseConditionalScore:
        """The (cached) noise-conditional score of the fitted oracle."""
        if self._fixed_oracle is not None:
            if self._noise is None:
                self._noise = NoiseConditionalScore(self._fixed_oracle)
            return self._noise
        key = (self.data.device, self.data.dtype, self.data.data_ptr(), self.data._version)
        if self._noise is None or key != self._noise_key:
            assert isinstance(self.estimator, Estimator)
            self._noise = NoiseConditionalScore(self.estimator.fit(self.data))
            self._noise_key = key
        return self._noise

    # -- scheduler -> noise levels --------------------------------------------------------------------
    def configure_for(self, scheduler: Any) -> "DiscoScoreModel":
        """Adopt ``scheduler``'s conventions: its prediction type and its timestep -> sigma map.

        Variance-preserving schedulers (anything with ``alphas_cumprod`` and a ``prediction_type``
        of epsilon, sample or v_prediction) and ScoreSdeVeScheduler are supported.

        Returns:
            self, for chaining.
        Raises:
            ValueError: for schedulers whose model output this model cannot produce.
        """
        config = getattr(scheduler, "config", None)
        if isinstance(scheduler, ScoreSdeVeScheduler):
            self.register_to_config(noise_schedule="ve", prediction_type="score")
            return self
        alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
        prediction_type = None if config is None else config.get("prediction_type")
        if alphas_cumprod is None or prediction_type is None:
            raise ValueError(f"{type(scheduler).__name__} is not supported: DiscoScoreModel works with "
                             f"variance-preserving schedulers (alphas_cumprod and prediction_type) and "
                             f"ScoreSdeVeScheduler")
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"{type(scheduler).__name__} has prediction_type={prediction_type!r}; "
                             f"supported: 'epsilon', 'sample', 'v_prediction'")
        if config.get("timestep_type", "discrete") != "discrete":
            raise ValueError(f"{type(scheduler).__name__} with timestep_type={config.get('timestep_type')!r} "
                             f"is not supported; use timestep_type='discrete'")
        abar = torch.as_tensor(alphas_cumprod).to(torch.float64).cpu()
        # Schedulers that place their sigmas by Karras/exponential/beta rules map them back to
        # timesteps by interpolating log-sigma; the others interpolate sigma linearly.
        log_rule = any(config.get(k, False) for k in ("use_karras_sigmas", "use_exponential_sigmas",
                                                       "use_beta_sigmas"))
        self.train_sigmas = torch.sqrt((1 - abar) / abar).to(self.data.device)
        self.register_to_config(noise_schedule="vp", prediction_type=prediction_type,
                                num_train_timesteps=int(abar.shape[0]),
                                sigma_interpolation="log" if log_rule else "linear")
        return self

    def timestep_to_sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """(B,) timesteps -> (B,) float64 noise levels ``sigma'`` of the variance-exploding form."""
        t = timestep.detach().to(torch.float64).cpu()
        if self.config.noise_schedule == "ve":
            if bool((t < 0).any()):
                raise ValueError("for ScoreSdeVeScheduler the timestep passed to the model is sigma, which must be >= 0")
            return t
        table = self.train_sigmas.detach().to(torch.float64).cpu()
        last = table.shape[0] - 1
        if bool((t < 0).any()) or bool((t > last).any()):
            raise ValueError(f"timesteps must lie in [0, {last}]; got {t.min().item()}..{t.max().item()}")
        lo = t.floor().long().clamp(max=max(last - 1, 0))
        frac = t - lo
        hi = (lo + 1).clamp(max=last)
        if self.config.sigma_interpolation == "log":
            return torch.exp((1 - frac) * table[lo].log() + frac * table[hi].log())
        return (1 - frac) * table[lo] + frac * table[hi]

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                return_dict: bool = True) -> DiscoScoreModelOutput | tuple[torch.Tensor]:
        """The scheduler's prediction at ``sample`` (B, d) (or (B, ...) with d features) and ``timestep``.

        Args:
            sample: (B, d) model input (the scheduler's ``scale_model_input`` output).
            timestep: a scalar or a (B,) tensor: scheduler timesteps (variance-preserving) or noise
                levels sigma (ScoreSdeVeScheduler).
            return_dict: return :class:`DiscoScoreModelOutput` (default) or a 1-tuple.
        """
        if self.config.noise_schedule is None:
            raise ValueError("call model.configure_for(scheduler) first (EmpiricalDiffusionPipeline does this)")
        if not isinstance(sample, torch.Tensor):
            raise TypeError(f"sample must be a torch.Tensor; got {type(sample).__name__}")
        dim = self.config.dim
        if sample.ndim < 2 or math.prod(sample.shape[1:]) != dim:
            raise ValueError(f"sample must have shape (batch, {dim}); got {tuple(sample.shape)}")
        if not sample.is_floating_point():
            raise TypeError(f"sample must be a floating tensor; got dtype {sample.dtype}")
        flat = sample.reshape(sample.shape[0], dim)
        # NaN or inf would otherwise run through the oracle and come back as a silent NaN prediction
        bad = int((~torch.isfinite(flat)).sum())
        if bad:
            raise ValueError(f"sample contains {bad} non-finite value(s) (NaN or inf)")
        steps = torch.as_tensor(timestep).reshape(-1)
        if steps.is_floating_point() and not bool(torch.isfinite(steps).all()):
            raise ValueError(f"timestep contains non-finite value(s) (NaN or inf): {timestep}")
        if steps.numel() == 1:
            steps = steps.expand(flat.shape[0])
        if steps.shape[0] != flat.shape[0]:
            raise ValueError(f"timestep must be a scalar or have one entry per sample ({flat.shape[0]}); "
                             f"got {steps.shape[0]}")
        sigmas = self.timestep_to_sigma(steps)
        out = torch.empty_like(flat)
        # One oracle call per distinct noise level (a sampling step has a single level).
        for sigma in torch.unique(sigmas):
            rows = (sigmas == sigma).nonzero().squeeze(1).to(flat.device)
            out[rows] = self._predict(flat[rows], float(sigma)).to(flat.dtype)
        out = out.reshape(sample.shape)
        return DiscoScoreModelOutput(sample=out) if return_dict else (out,)

    def _predict(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        noise = self.noise_conditional
        oracle = noise.oracle
        xo = x.to(device=oracle.device, dtype=torch.promote_types(x.dtype, oracle.compute_dtype))
        if self.config.noise_schedule == "ve":
            return noise.score(xo, sigma).to(x.device)
        scale = math.sqrt(1.0 + sigma * sigma)  # 1 / sqrt(abar)
        y = xo * scale
        score = noise.score(y, sigma)
        epsilon = -sigma * score
        clean = y + sigma * sigma * score
        kind = self.config.prediction_type
        if kind == "epsilon":
            result = epsilon
        elif kind == "sample":
            result = clean
        else:  # v_prediction: sqrt(abar) eps - sqrt(1 - abar) x0
            result = (epsilon - sigma * clean) / scale
        return result.to(x.device)


def _step_kwargs(step: Any, generator: torch.Generator | None, eta: float) -> dict[str, Any]:
    """The optional ``generator``/``eta`` arguments a scheduler's ``step`` accepts."""
    params = inspect.signature(step).parameters
    kwargs: dict[str, Any] = {}
    if "generator" in params:
        kwargs["generator"] = generator
    if "eta" in params:
        kwargs["eta"] = eta
    return kwargs


class EmpiricalDiffusionPipeline(DiffusionPipeline):
    """Diffusion sampling of (n, d) tabular data with a :class:`DiscoScoreModel` and any supported scheduler.

    Args:
        model: the :class:`DiscoScoreModel`.
        scheduler: DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler (and other
            variance-preserving schedulers) or ScoreSdeVeScheduler. For DDPM/DDIM pass
            ``clip_sample=False`` unless the data lie in [-1, 1].
    """

    model_cpu_offload_seq = "model"

    def __init__(self, model: DiscoScoreModel, scheduler: Any) -> None:
        super().__init__()
        if not isinstance(model, DiscoScoreModel):
            raise TypeError(f"model must be a DiscoScoreModel; got {type(model).__name__}")
        self.register_modules(model=model, scheduler=scheduler)

    def _warn_about_scheduler(self) -> None:
        config, data = self.scheduler.config, self.model.data
        if data.shape[0] == 0:
            return
        if config.get("clip_sample", False) or config.get("thresholding", False):
            bound = float(config.get("clip_sample_range", 1.0))
            if float(data.abs().max()) > bound:
                # clipping silently squeezes the samples into the box: the user must change the scheduler
                warnings.warn(f"{type(self.scheduler).__name__} clips predicted samples to [-{bound:g}, {bound:g}] "
                              f"but the data reach {float(data.abs().max()):.3g}; pass clip_sample=False "
                              f"(and thresholding=False)", UserWarning, stacklevel=3)
        alphas_cumprod = getattr(self.scheduler, "alphas_cumprod", None)
        if isinstance(alphas_cumprod, torch.Tensor) and alphas_cumprod.numel() and data.shape[0] >= 2:
            # A variance-preserving chain starts at N(0, I), i.e. it assumes the data are invisible
            # at the last step: alpha_bar_T E[x^2] << 1. Data of sd 1000 stay visible (the samples
            # come back with a fraction of the data's spread), so say so.
            signal = float(alphas_cumprod.min()) * float((data.to(torch.float64) ** 2).mean(0).max())
            if signal > 0.1:
                warnings.warn(f"{type(self.scheduler).__name__} starts from N(0, I), but its last noise level "
                              f"leaves the data visible (alpha_bar_T x mean square of the data = {signal:.3g}, "
                              f"should be << 1): the samples will not have the data's spread. Standardise "
                              f"the data (zero mean, unit variance) and map the samples back, or use "
                              f"ScoreSdeVeScheduler with sigma_max from disco_score.samplers.noise_range",
                              UserWarning, stacklevel=3)
        if isinstance(self.scheduler, ScoreSdeVeScheduler) and data.shape[0] >= 2:
            sigma_max, _ = noise_range(data)
            if config.sigma_max < 0.5 * sigma_max:
                warnings.warn(f"ScoreSdeVeScheduler sigma_max={config.sigma_max:g} is below half the data's "
                              f"largest pairwise distance ({sigma_max:g}); samples will not cover the data. "
                              f"See disco_score.samplers.noise_range", UserWarning, stacklevel=3)

    @torch.no_grad()
    def __call__(self, num_samples: int = 1, num_inference_steps: int = 50,
                 generator: torch.Generator | None = None, eta: float = 0.0, output_type: str = "pt",
                 return_dict: bool = True) -> EmpiricalDiffusionOutput | tuple[Any]:
        """Generate ``num_samples`` points.

        Args:
            num_samples: how many points.
            num_inference_steps: scheduler steps (ScoreSdeVe: predictor steps, each preceded by
                ``correct_steps`` corrector steps).
            generator: a torch.Generator for reproducible sampling.
            eta: DDIM's noise weight (0 = deterministic DDIM; ignored by other schedulers).
            output_type: ``"pt"`` (torch tensor) or ``"np"`` (numpy array).
            return_dict: return :class:`EmpiricalDiffusionOutput` (default) or a 1-tuple.
        """
        num_samples = check_int(num_samples, "num_samples")
        num_inference_steps = check_int(num_inference_steps, "num_inference_steps")
        if output_type not in ("pt", "np"):
            raise ValueError(f"output_type must be 'pt' or 'np'; got {output_type!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
        model, scheduler = self.model, self.scheduler
        model.configure_for(scheduler)
        self._warn_about_scheduler()
        device, dtype = self._execution_device, model.dtype
        shape = (num_samples, model.config.dim)
        sample = randn_tensor(shape, generator=generator, device=device, dtype=dtype) * scheduler.init_noise_sigma

        if isinstance(scheduler, ScoreSdeVeScheduler):
            # Predictor-corrector loop of diffusers' ScoreSdeVePipeline; the model gets sigma as "timestep".
            scheduler.set_timesteps(num_inference_steps)
            scheduler.set_sigmas(num_inference_steps)
            sample_mean = sample
            for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
                sigma_t = scheduler.sigmas[i] * torch.ones(num_samples, device=device)
                for _ in range(scheduler.config.correct_steps):
                    score = model(sample, sigma_t).sample
                    sample = scheduler.step_correct(score, sample, generator=generator).prev_sample
                score = model(sample, sigma_t).sample
                output = scheduler.step_pred(score, t, sample, generator=generator)
                sample, sample_mean = output.prev_sample, output.prev_sample_mean
            sample = sample_mean  # the last step's mean: no noise added after the final level
        else:
            scheduler.set_timesteps(num_inference_steps, device=device)
            extra = _step_kwargs(scheduler.step, generator, eta)
            for t in self.progress_bar(scheduler.timesteps):
                model_input = scheduler.scale_model_input(sample, t)
                prediction = model(model_input, t).sample
                sample = scheduler.step(prediction, t, sample, **extra).prev_sample

        if not bool(torch.isfinite(sample).all()):
            raise ValueError("sampling produced non-finite values; check the scheduler's noise range "
                             "against the data's scale")
        samples: torch.Tensor | np.ndarray = sample.to(model.data.dtype)
        if output_type == "np":
            samples = samples.cpu().numpy()
        self.maybe_free_model_hooks()
        if not return_dict:
            return (samples,)
        return EmpiricalDiffusionOutput(samples=samples)

"""Synthetic embeddings with a known golden reward, for tests and quick studies.

The generative story mirrors section 4's Gaussian example (Example 1, Proposition 10): each
prompt x has a centre c_x ~ N(0, prompt_scale² I) in a k-dimensional "quality" latent space; a
response to it sits at u = c_x + response_scale · ε, ε ~ N(0, I). The golden reward is

    r(u) = w·u + nonlinearity · c·tanh(V u),      ‖w‖ = 1,

so within a prompt the reward varies with standard deviation ≈ response_scale, and across
prompts it also varies with the prompt's centre (the structure that makes cross-prompt pairs
more diverse). The embedding the reward models see is a random linear mix of u and of
reward-irrelevant "topic" latents z (prompt-level and response-level), plus Gaussian noise:

    e = [u, z] M + embedding_noise · η,   M ~ N(0, 1/(k + k_z)) of shape (k + k_z, d).

With response_scale = 1, β from 0.5 to 10 gives in-prompt error rates of roughly 38 % to 4 %, the
paper's range (section 6.2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError
from .annotate import ResponsePool


@dataclass(frozen=True)
class SyntheticWorld:
    dim: int = 64  # embedding size d
    latent_dim: int = 8  # k, dimensions that carry the golden reward
    nuisance_dim: int = 8  # k_z, reward-irrelevant topic dimensions mixed into the embedding
    prompt_scale: float = 1.0  # std of a prompt's centre per latent dimension
    response_scale: float = 1.0  # std of a response around its prompt's centre
    nonlinearity: float = 0.5  # weight of the tanh part of the golden reward
    embedding_noise: float = 0.1  # std of the noise added to each embedding coordinate
    seed: int = 0  # fixes the reward function and the mixing matrix (not the samples)

    def __post_init__(self):
        for name in ("dim", "latent_dim"):
            if getattr(self, name) < 1:
                raise InputError(f"SyntheticWorld.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.nuisance_dim < 0:
            raise InputError(f"SyntheticWorld.nuisance_dim must be ≥ 0, got {self.nuisance_dim}")
        for name in ("prompt_scale", "response_scale", "embedding_noise"):
            if getattr(self, name) < 0:
                raise InputError(f"SyntheticWorld.{name} must be ≥ 0, got {getattr(self, name)}")
        rng = np.random.default_rng([self.seed, 1729])
        k, kz = self.latent_dim, self.nuisance_dim
        w = rng.normal(size=k)
        object.__setattr__(self, "_w", w / np.linalg.norm(w))
        object.__setattr__(self, "_v", rng.normal(size=(k, k)) / np.sqrt(k))
        object.__setattr__(self, "_c", rng.normal(size=k) / np.sqrt(k))
        object.__setattr__(self, "_mix", rng.normal(size=(k + kz, self.dim)) / np.sqrt(k + kz))

    def golden_reward(self, latent: np.ndarray) -> np.ndarray:
        """r(u) = w·u + nonlinearity · c·tanh(V u), for latents u of shape (n, k)."""
        latent = np.asarray(latent, dtype=np.float64)
        return latent @ self._w + self.nonlinearity * (np.tanh(latent @ self._v.T) @ self._c)

    def sample(self, n_prompts: int, responses_per_prompt: int, seed: int = 0, dtype=np.float32) -> ResponsePool:
        """``n_prompts`` × ``responses_per_prompt`` responses, prompt-major (prompt_ids 0, 0, …, 1, 1, …)."""
        if n_prompts < 1 or responses_per_prompt < 1:
            raise InputError(
                f"need at least one prompt and one response per prompt, got {n_prompts} × {responses_per_prompt}"
            )
        rng = np.random.default_rng([self.seed, seed, 31337])
        k, kz, m = self.latent_dim, self.nuisance_dim, responses_per_prompt
        centre = rng.normal(scale=self.prompt_scale, size=(n_prompts, 1, k))
        latent = (centre + rng.normal(scale=self.response_scale, size=(n_prompts, m, k))).reshape(-1, k)
        # Topic: mostly a property of the prompt, a little of the response.
        topic = rng.normal(size=(n_prompts, 1, kz)) + 0.3 * rng.normal(size=(n_prompts, m, kz))
        topic = topic.reshape(n_prompts * m, kz)
        embeddings = np.concatenate([latent, topic], axis=1) @ self._mix
        embeddings += rng.normal(scale=self.embedding_noise, size=embeddings.shape)
        return ResponsePool(embeddings.astype(dtype), self.golden_reward(latent), np.repeat(np.arange(n_prompts), m))

    def train_test(
        self,
        n_train_prompts: int,
        n_test_prompts: int,
        train_responses: int = 10,
        test_responses: int = 500,
        seed: int = 0,
    ) -> tuple[ResponsePool, ResponsePool]:
        """The paper's layout (appendix D.3): 10 candidate responses per training prompt, N (500)
        responses per test prompt for Best-of-N. Test prompt ids continue after the training ones."""
        train = self.sample(n_train_prompts, train_responses, seed=2 * seed)
        test = self.sample(n_test_prompts, test_responses, seed=2 * seed + 1)
        test.prompt_ids = test.prompt_ids + n_train_prompts
        return train, test

    def to_dict(self) -> dict:
        return asdict(self)

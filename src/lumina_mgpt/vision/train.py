"""Training a small VQ image tokenizer: reconstruction + codebook/commitment losses, dead-code
re-initialization, and checkpoints that resume bit-exactly (weights, optimizer, RNG, usage)."""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lumina_mgpt.atomic import write_atomically
from lumina_mgpt.errors import ImageTokenizerError
from lumina_mgpt.vision.quantize import code_distances, kmeans, lookup, quantize_with_losses
from lumina_mgpt.vision.tokenizer import ImageTokenizer

TRAINER_STATE_FILE = "trainer_state.pt"


_STATE_KEYS = ("settings", "model", "optimizer", "generator", "steps_since_used", "step", "history", "crop_shapes")


def _read_trainer_state(path: Path) -> dict:
    """A checked trainer_state.pt: readable and holding everything a resume needs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, pickle errors... for damaged files
        raise ImageTokenizerError(f"{path} is unreadable ({error}); the file is truncated or damaged") from error
    missing = [key for key in _STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ImageTokenizerError(
            f"{path} lacks {', '.join(missing)}: it is not a trainer state of this version; start the run anew"
        )
    return state


@dataclass(frozen=True)
class TrainSettings:
    """Optimization settings; saved with every checkpoint and reused on resume."""

    steps: int = 1500
    # Crops per step at the smallest crop size; larger crops come fewer per step (at least one), so
    # every step covers about the same number of pixels.
    batch_size: int = 16
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    commitment_weight: float = 0.25
    # Codes unused for this many steps are moved onto encoder outputs of the current batch, drawn
    # with probability proportional to their quantization error: onto what the codebook serves
    # badly, never onto duplicates of an already well-served latent (which would make the choice
    # between two codes for the same content depend on noise).
    dead_code_window: int = 100
    # Weight of a re-encoding loss: the reconstruction, encoded again, must fall in its own code's
    # cell (cross-entropy over negative squared distances to the codebook), so that
    # encode(decode(codes)) returns the codes.
    consistency_weight: float = 0.1
    # Steps trained as a plain autoencoder (no quantization) before the codebook is set by k-means
    # on the encoder's latents. Without it a patch-local encoder collapses onto one or two codes,
    # which dead-code revival cannot undo: the encoder has not yet learned latents worth telling apart.
    autoencoder_warmup: int = 0
    kmeans_samples: int = 16384
    save_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "learning_rate", "dead_code_window", "save_every"):
            if getattr(self, name) <= 0:
                raise ImageTokenizerError(f"training setting {name} must be positive, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ImageTokenizerError(f"training setting warmup_steps must be >= 0, got {self.warmup_steps}")


class VQTrainer:
    """Trains `tokenizer` on crops in [-1, 1], checkpointing to `output`.

    `images` is one tensor (N, 3, S, S) or several of different sizes. With several, each step
    trains on one size, drawn uniformly: an encoder and decoder trained at a single size fit that
    size (their GroupNorm statistics and zero padding see a 32 px crop differently from a 256 px
    image), and their codes stop surviving decode -> encode at any other size."""

    def __init__(
        self,
        tokenizer: ImageTokenizer,
        images: torch.Tensor | Sequence[torch.Tensor],
        settings: TrainSettings,
        output: Path,
    ):
        self.tokenizer = tokenizer.train()
        self.crop_sets = _check_crop_sets([images] if isinstance(images, torch.Tensor) else list(images))
        self.settings = settings
        self.output = Path(output)
        self.step = 0
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.steps_since_used = torch.zeros(tokenizer.codebook_size, dtype=torch.long)
        self.history: list[dict[str, float]] = []
        self.optimizer = torch.optim.Adam(tokenizer.parameters(), lr=settings.learning_rate, betas=(0.5, 0.9))

    @classmethod
    def resume(
        cls, output: Path, images: torch.Tensor | Sequence[torch.Tensor], steps: int | None = None
    ) -> "VQTrainer":
        """Continue the run saved in `output` on the same crops; `steps` may extend its total length."""
        state_file = Path(output) / TRAINER_STATE_FILE
        if not state_file.is_file():
            raise ImageTokenizerError(f"no {TRAINER_STATE_FILE} in {output}: nothing to resume")
        state = _read_trainer_state(state_file)
        settings = TrainSettings(**state["settings"])
        if steps is not None:
            settings = dataclasses.replace(settings, steps=steps)
        tokenizer = ImageTokenizer.from_pretrained(output)
        # The weights come from the state file, which is written last: a crash between the folder's
        # write and the state's leaves a newer folder beside the older state, and resuming stays exact.
        tokenizer.load_state_dict(state["model"])
        trainer = cls(tokenizer, images, settings, output)
        if state["crop_shapes"] != trainer._crop_shapes():
            raise ImageTokenizerError(
                f"{output} was trained on crops {state['crop_shapes']}, not {trainer._crop_shapes()}: "
                "resume with the same crop sizes and counts"
            )
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.generator.set_state(state["generator"])
        trainer.steps_since_used = state["steps_since_used"]
        trainer.step = state["step"]
        trainer.history = state["history"]
        return trainer

    def learning_rate(self, step: int) -> float:
        """Linear warmup, then cosine decay to a tenth of the peak at the last step."""
        peak = self.settings.learning_rate
        if step < self.settings.warmup_steps:
            return peak * (step + 1) / self.settings.warmup_steps
        progress = (step - self.settings.warmup_steps) / max(1, self.settings.steps - self.settings.warmup_steps)
        return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def sample_batch(self) -> torch.Tensor:
        """Random crops of one size (drawn uniformly among the crop sets), randomly flipped."""
        # (one set draws nothing here, so single-size runs keep the random stream they always had)
        choice = torch.randint(len(self.crop_sets), (1,), generator=self.generator) if len(self.crop_sets) > 1 else 0
        crops = self.crop_sets[int(choice)]
        smallest = min(c.shape[-2] * c.shape[-1] for c in self.crop_sets)
        count = max(1, self.settings.batch_size * smallest // (crops.shape[-2] * crops.shape[-1]))
        batch = crops[torch.randint(crops.shape[0], (count,), generator=self.generator)]
        flips = torch.rand(count, generator=self.generator) < 0.5
        return torch.where(flips[:, None, None, None], batch.flip(-1), batch)

    def train_step(self) -> dict[str, float]:
        """One optimizer step on a random batch."""
        batch = self.sample_batch()

        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        quantizing = self.step >= self.settings.autoencoder_warmup
        if self.settings.autoencoder_warmup and self.step == self.settings.autoencoder_warmup:
            self._init_codebook_by_kmeans()
        latents = self.tokenizer.encode_latents(batch)
        quantized, codes, vq_loss = latents, None, torch.zeros(())
        if quantizing:
            quantized, codes, vq_loss = quantize_with_losses(
                latents, self.tokenizer.codebook, self.settings.commitment_weight
            )
        reconstruction = self.tokenizer.decode_latents(quantized)
        reconstruction_loss = F.mse_loss(reconstruction, batch) + F.l1_loss(reconstruction, batch)
        loss = reconstruction_loss + vq_loss
        consistency = torch.zeros(())
        if quantizing and self.settings.consistency_weight:
            again = self.tokenizer.encode_latents(reconstruction.clamp(-1.0, 1.0))
            consistency = F.cross_entropy(-code_distances(again, self.tokenizer.codebook), codes)
            loss = loss + self.settings.consistency_weight * consistency
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

        codes_in_batch, revived = 0, 0
        if quantizing:
            used = torch.bincount(codes.flatten(), minlength=self.tokenizer.codebook_size) > 0
            self.steps_since_used = torch.where(used, 0, self.steps_since_used + 1)
            codes_in_batch, revived = int(used.sum()), self._revive_dead_codes(latents.detach(), codes)
        self.step += 1
        record = {
            "step": self.step,
            "loss": loss.item(),
            "reconstruction": reconstruction_loss.item(),
            "vq": vq_loss.item(),
            "consistency": consistency.item(),
            "codes_in_batch": codes_in_batch,
            "revived": revived,
        }
        self.history.append(record)
        return record

    @torch.no_grad()
    def _init_codebook_by_kmeans(self) -> None:
        vectors, count = [], 0
        while count < self.settings.kmeans_samples:
            latents = self.tokenizer.encode_latents(self.sample_batch())
            vectors.append(latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]))
            count += vectors[-1].shape[0]
        # Distinct latents only: a flat background would otherwise claim most of the centroids.
        distinct = torch.unique(torch.cat(vectors), dim=0)
        codebook = self.tokenizer.codebook
        centroids = kmeans(distinct, codebook.shape[0], iterations=20, generator=self.generator)
        codebook.copy_(centroids.to(codebook.dtype))

    def run(self, progress: bool = True) -> list[dict[str, float]]:
        """Train up to `settings.steps`, saving every `save_every` steps and at the end."""
        bar = tqdm(total=self.settings.steps, initial=self.step, disable=not progress, desc="train-vq")
        while self.step < self.settings.steps:
            record = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", codes=record["codes_in_batch"])
            if self.step % self.settings.save_every == 0 or self.step == self.settings.steps:
                self.save()
        bar.close()
        return self.history

    def save(self) -> None:
        """Write the tokenizer folder plus trainer_state.pt (optimizer, RNG, usage, history)."""
        self.tokenizer.save_pretrained(self.output)
        state = {
            "settings": dataclasses.asdict(self.settings),
            "model": self.tokenizer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "steps_since_used": self.steps_since_used,
            "step": self.step,
            "history": self.history,
            "crop_shapes": self._crop_shapes(),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
        write_atomically(self.output / TRAINER_STATE_FILE, lambda temp: Path(temp).write_bytes(payload))

    def _crop_shapes(self) -> list[list[int]]:
        return [list(crops.shape) for crops in self.crop_sets]

    def _revive_dead_codes(self, latents: torch.Tensor, codes: torch.Tensor) -> int:
        dead = torch.nonzero(self.steps_since_used >= self.settings.dead_code_window).flatten()
        if dead.numel() == 0:
            return 0
        vectors = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        errors = (latents - lookup(codes, self.tokenizer.codebook)).square().sum(1).flatten().float()
        if errors.sum() <= 0:  # every latent sits on a code: nothing to serve better
            return 0
        picks = torch.multinomial(errors, dead.numel(), replacement=True, generator=self.generator)
        codebook = self.tokenizer.codebook
        with torch.no_grad():
            codebook[dead] = vectors[picks].to(codebook.dtype)
        # Stale Adam moments would immediately drag the revived rows away again.
        moments = self.optimizer.state.get(codebook, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in moments:
                moments[key][dead] = 0
        self.steps_since_used[dead] = 0
        return int(dead.numel())


def _check_crop_sets(crop_sets: list[torch.Tensor]) -> list[torch.Tensor]:
    if not crop_sets:
        raise ImageTokenizerError("no training crops given")
    for crops in crop_sets:
        if crops.dim() != 4 or crops.shape[1] != 3 or crops.shape[0] == 0 or not crops.is_floating_point():
            raise ImageTokenizerError(
                f"training crops must be a non-empty float tensor (N, 3, H, W), got {crops.dtype} {tuple(crops.shape)}"
            )
    return crop_sets


@torch.no_grad()
def keep_used_codes(tokenizer: ImageTokenizer, pixels: torch.Tensor, batch_size: int = 1024) -> ImageTokenizer:
    """A copy of `tokenizer` whose codebook holds only the codes that `pixels` (N, 3, H, W) encode to,
    in their original order.

    After training on a finite world, the codes its images never use sit next to used ones (dead-code
    revival and k-means with more centroids than distinct latents put them there): a decoded image,
    encoded again, falls into them by a hair and comes back with codes a language model never saw.
    Without them every latent goes to a code the data uses, and the vocabulary is what is used."""
    batches = range(0, len(pixels), batch_size)
    used = torch.unique(torch.cat([tokenizer.encode(pixels[i : i + batch_size]).flatten() for i in batches]))
    pruned = ImageTokenizer(dataclasses.replace(tokenizer.config, codebook_size=int(used.numel())))
    state = tokenizer.model.state_dict()
    state["quantize.embedding.weight"] = tokenizer.codebook[used].detach().clone()
    pruned.model.load_state_dict(state)
    return pruned.eval()

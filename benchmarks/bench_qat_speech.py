"""Frame-level speech / non-speech with an LSTM: float vs PTQ int8 / int4 vs QAT 4 / 2-bit (issue 5, speech).

Audio: ``../shared/data/speech_audio`` (see its SOURCE.md). The model trains on ``silero_test.wav`` (60 s) and is
evaluated on the held-out ``jfk.flac`` (11 s, resampled 44.1 -> 16 kHz with ``scipy.signal.resample_poly``, mono).
Labels come from an independent model, Silero VAD (PyPI ``silero-vad``, its packaged JIT model, no download): its
speech probability per 512-sample chunk (32 ms at 16 kHz), threshold 0.5, computed on the exact audio the LSTM sees.
Training adds copies of the training clip with white noise at 20/10/5 dB SNR and gains of 0.25 and 2 (clipped to
+-1), each labelled by Silero again. Features: log-mel, 40 bins, 25 ms Hann window, 8 ms hop (a quarter chunk),
the four frames of each chunk stacked into one 160-dim step; normalised with the training set's mean and std.
Model: ``nn.LSTM(160, 64, num_layers=2)`` + ``nn.Linear(64, 2)``, one prediction per chunk, causal like Silero.
Adam (lr 3e-3), ``--steps`` batches of 32 random 4 s windows. PTQ calibrates ``w8a8`` on 16 training windows.
QAT: ``quanta.prepare_qat(model, preset)`` on the trained float model, ``--qat-steps`` more batches at lr 3e-4, then
``quanta.convert``; a row whose ``prepare_qat`` raises ``UnsupportedError`` (no LSTM QAT twin yet) says so instead.
The ``float32 + N steps`` row is the float model fine-tuned on the same batches at the same rate, QAT's reference.
Accuracy is the percent of held-out chunks whose prediction matches Silero's label, on the clean clip and on the clip
with white noise at 10 dB SNR (relabelled by Silero; the model never saw jfk.flac in any form).

    pip install silero-vad==6.2.3 soundfile scipy -c .venv/constraints.txt   # torchaudio is not needed
    .venv/bin/python benchmarks/bench_qat_speech.py [--data ../shared/data] [--steps 200] [--qat-steps 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quanta
from quanta.errors import UnsupportedError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SR, CHUNK = 16000, 512  # Silero VAD's 16 kHz rate and chunk (32 ms)
HOP, WIN, N_FFT, N_MELS = CHUNK // 4, 400, 512, 40  # 8 ms hop, 25 ms window: 4 frames per chunk
WINDOW, BATCH = 125, 32  # training windows of 125 chunks (4 s)
PTQ = ("w8a16", "w8a8", "w4a16", "w4a16-g32", "w3a16-g32", "w2a16-g32")
QAT = ("w4a16", "w4a16-g32", "w2a16-g32")


def read_16k(path: Path) -> torch.Tensor:
    """Mono float32 audio at 16 kHz, (samples,)."""
    import soundfile
    from scipy.signal import resample_poly

    audio, sr = soundfile.read(str(path), dtype="float32", always_2d=True)  # (samples, channels)
    audio = audio.mean(axis=1)
    if sr != SR:
        g = math.gcd(SR, sr)
        audio = resample_poly(audio, SR // g, sr // g).astype(np.float32)  # 44.1 kHz: up 160, down 441
    return torch.from_numpy(np.ascontiguousarray(audio))


class SileroLabeller:
    """Silero VAD as an independent labeller: one speech probability per 512-sample chunk, as its docs call it."""

    def __init__(self) -> None:
        threads = torch.get_num_threads()
        from silero_vad import load_silero_vad  # its import sets torch.set_num_threads(1); put it back

        torch.set_num_threads(threads)
        self.model = load_silero_vad()  # the packaged JIT model (silero_vad/data/silero_vad.jit)

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        """(samples,) at 16 kHz -> (chunks,) labels, 1 = speech (probability > 0.5); the last chunk zero-padded."""
        self.model.reset_states()  # recurrent state and the 64-sample context start empty for each clip
        audio = nn.functional.pad(audio, (0, -len(audio) % CHUNK))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny ops, one chunk at a time: extra threads only spin (10x slower on a busy CPU)
        try:
            probs = [self.model(chunk, SR).item() for chunk in audio.split(CHUNK)]
        finally:
            torch.set_num_threads(threads)
        return (torch.tensor(probs) > 0.5).long()


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SR) -> torch.Tensor:
    """Triangular HTK-mel filters, (n_fft // 2 + 1, n_mels), 0 Hz to Nyquist."""
    mel = torch.linspace(0.0, 2595 * math.log10(1 + sr / 2 / 700), n_mels + 2, dtype=torch.float64)
    hz = 700 * (10 ** (mel / 2595) - 1)  # (n_mels + 2,) band edges
    freqs = torch.linspace(0.0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, mid, hi = hz[:-2], hz[1:-1], hz[2:]
    up = (freqs[:, None] - lo) / (mid - lo)
    down = (hi - freqs[:, None]) / (hi - mid)
    return up.minimum(down).clamp(min=0).float()


def log_mel(audio: torch.Tensor) -> torch.Tensor:
    """(samples,) -> (chunks, 4 * N_MELS): frame i centred on sample i * HOP, the 4 frames of a chunk stacked."""
    audio = nn.functional.pad(audio, (0, -len(audio) % CHUNK))
    chunks = len(audio) // CHUNK
    spec = torch.stft(audio, N_FFT, HOP, WIN, torch.hann_window(WIN), center=True, return_complex=True)
    power = spec.abs().square().T[: 4 * chunks]  # (frames, n_fft // 2 + 1)
    mel = (power @ mel_filterbank()).clamp(min=1e-10).log()  # (frames, N_MELS)
    return mel.reshape(chunks, 4 * N_MELS)


def add_noise(audio: torch.Tensor, snr_db: float, g: torch.Generator) -> torch.Tensor:
    """``audio`` plus white Gaussian noise at ``snr_db`` below the clip's mean power."""
    return audio + torch.randn(audio.shape, generator=g) * (audio.square().mean() / 10 ** (snr_db / 10)).sqrt()


def augment(audio: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """The clip, with white noise at 20/10/5 dB SNR, and at gains 0.25 and 2 (clipped to +-1), by name."""
    g = torch.Generator().manual_seed(seed)
    noisy = {f"{snr} dB SNR": add_noise(audio, snr, g) for snr in (20, 10, 5)}
    return {"clean": audio, **noisy, "gain 0.25": audio * 0.25, "gain 2": (audio * 2).clamp(-1, 1)}


class SpeechLSTM(nn.Module):
    """Frame classifier: (batch, chunks, 4 * N_MELS) -> (batch, chunks, 2) logits."""

    def __init__(self, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4 * N_MELS, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0])


def windows(
    feats: list[torch.Tensor], labels: list[torch.Tensor], g: torch.Generator, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random training windows: (n, WINDOW, features) and (n, WINDOW)."""
    clip = torch.randint(len(feats), (n,), generator=g)
    xs, ys = [], []
    for c in clip.tolist():
        start = int(torch.randint(len(feats[c]) - WINDOW + 1, (1,), generator=g))
        xs.append(feats[c][start : start + WINDOW])
        ys.append(labels[c][start : start + WINDOW])
    return torch.stack(xs), torch.stack(ys)


def train(
    model: nn.Module, feats: list[torch.Tensor], labels: list[torch.Tensor], steps: int, lr: float, seed: int
) -> None:
    """Train in place: ``steps`` Adam steps on batches of BATCH random windows drawn with ``seed``."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x, y = windows(feats, labels, g, BATCH)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@torch.no_grad()
def frame_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Percent of chunks of the whole held-out clip (one sequence) whose prediction matches Silero's label."""
    return 100 * (model(x[None])[0].argmax(-1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--qat-steps", type=int, default=100)
    parser.add_argument("--ptq", default=",".join(PTQ), help="Comma-separated PTQ presets.")
    parser.add_argument("--qat", default=",".join(QAT), help="Comma-separated QAT presets.")
    parser.add_argument("--seed", type=int, default=0, help="Seeds the initial weights and the training batches.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small ops: 1 is fastest on 2 cores).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    audio_dir = args.data / "speech_audio"
    labeller = SileroLabeller()
    train_audio = augment(read_16k(audio_dir / "silero_test.wav"))
    clean = read_16k(audio_dir / "jfk.flac")
    test_audio = {"clean": clean, "10 dB SNR": add_noise(clean, 10, torch.Generator().manual_seed(3))}
    train_labels = [labeller(a) for a in train_audio.values()]
    speech = ", ".join(f"{n} {100 * y.float().mean():.1f}%" for n, y in zip(train_audio, train_labels, strict=True))
    print(f"Silero speech chunks: train silero_test.wav ({len(train_labels[0])} chunks each) {speech}")
    feats = [log_mel(a) for a in train_audio.values()]
    mean, std = torch.cat(feats).mean(0), torch.cat(feats).std(0)  # training set's, applied to the test clip too
    feats = [(f - mean) / std for f in feats]
    tests = {name: ((log_mel(a) - mean) / std, labeller(a)) for name, a in test_audio.items()}
    for name, (_, y) in tests.items():
        ratio = y.float().mean().item()
        print(
            f"held-out jfk.flac {name} ({len(y)} chunks): speech {100 * ratio:.1f}%, "
            f"majority class {100 * max(ratio, 1 - ratio):.2f}%"
        )
    labelled = time.perf_counter()

    def accuracies(model: nn.Module) -> list[float | str]:
        return [frame_accuracy(model, x, y) for x, y in tests.values()]

    model = SpeechLSTM()
    train(model, feats, train_labels, args.steps, lr=3e-3, seed=args.seed + 1)
    trained = time.perf_counter()
    rows: list[tuple[str, list[float | str], int | None]] = [("float32", accuracies(model), quanta.model_nbytes(model))]
    reference = copy.deepcopy(model)  # fine-tuned like the QAT rows, in float: what QAT's extra steps alone give
    train(reference, feats, train_labels, args.qat_steps, lr=3e-4, seed=args.seed + 4)
    rows.append((f"float32 + {args.qat_steps} steps", accuracies(reference), quanta.model_nbytes(reference)))
    calib = [windows(feats, train_labels, torch.Generator().manual_seed(2), 16)[0]]
    for preset in filter(None, args.ptq.split(",")):
        ptq = quanta.quantize(copy.deepcopy(model), preset, calib=calib)
        rows.append((f"PTQ {preset}", accuracies(ptq), quanta.model_nbytes(ptq)))
    for preset in filter(None, args.qat.split(",")):
        try:
            qat = quanta.prepare_qat(copy.deepcopy(model), preset)
        except UnsupportedError as exc:
            rows.append((f"QAT {preset}", [f"not available: {exc}", *[""] * (len(tests) - 1)], None))
            continue
        train(qat, feats, train_labels, args.qat_steps, lr=3e-4, seed=args.seed + 4)
        qat = quanta.convert(qat)
        rows.append((f"QAT {preset}", accuracies(qat), quanta.model_nbytes(qat)))

    print("\nFrame accuracy (%) on the held-out jfk.flac against Silero VAD's labels\n")
    print(f"| scheme | {' | '.join(tests)} | model bytes |")
    print(f"|---|{'---|' * len(tests)}---|")
    for scheme, accs, nbytes in rows:
        cells = [a if isinstance(a, str) else f"{a:.2f}" for a in accs]
        print(f"| {scheme} | {' | '.join(cells)} | {nbytes if nbytes is not None else '-'} |")
    done = time.perf_counter()
    print(
        f"\nlabels + features {labelled - start:.1f} s, float training {trained - labelled:.1f} s, "
        f"total {done - start:.1f} s wall, {time.process_time():.1f} s CPU, torch threads {torch.get_num_threads()}"
    )
    print(f"Command: {' '.join([Path(sys.executable).name, *sys.argv])}")


if __name__ == "__main__":
    main()

"""Signals: sampling, ADC-style uniform quantization, companding (G.711), dither and noise shaping, rate-distortion.

numpy arrays and torch tensors alike go in; the same kind comes out. The math runs in float64.
"""

from quanta.signal.companding import (
    A_LAW,
    MU_LAW,
    alaw_compress,
    alaw_decode,
    alaw_encode,
    alaw_expand,
    mulaw_compress,
    mulaw_decode,
    mulaw_encode,
    mulaw_expand,
)
from quanta.signal.dither import (
    NOISE_SHAPERS,
    TonePowers,
    band_power,
    dither_noise,
    ntf_band_gain,
    requantize,
    shaper_coefficients,
    tone_powers,
)
from quanta.signal.rate_distortion import (
    LloydMax,
    RDPoint,
    ecsq_distortion,
    lloyd_max_density,
    plot_rate_distortion,
    quantizer_distortion,
    rate_distortion_table,
    shannon_distortion,
    uniform_distortion,
)
from quanta.signal.sampling import resample, sample, sample_times
from quanta.signal.uniform import UniformResult, quantize_uniform, sine_sqnr_exact, sqnr, sqnr_theory

__all__ = [
    "A_LAW",
    "MU_LAW",
    "NOISE_SHAPERS",
    "LloydMax",
    "RDPoint",
    "TonePowers",
    "UniformResult",
    "alaw_compress",
    "alaw_decode",
    "alaw_encode",
    "alaw_expand",
    "band_power",
    "dither_noise",
    "ecsq_distortion",
    "lloyd_max_density",
    "mulaw_compress",
    "mulaw_decode",
    "mulaw_encode",
    "mulaw_expand",
    "ntf_band_gain",
    "plot_rate_distortion",
    "quantize_uniform",
    "quantizer_distortion",
    "rate_distortion_table",
    "requantize",
    "resample",
    "sample",
    "sample_times",
    "shannon_distortion",
    "shaper_coefficients",
    "sine_sqnr_exact",
    "sqnr",
    "sqnr_theory",
    "tone_powers",
    "uniform_distortion",
]

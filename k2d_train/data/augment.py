"""Seeded acoustic augmentation: speaking rate, pitch, room reverberation and additive noise.

Synthetic voices are clean, close-talk and perfectly steady; real lectures are not. Training audio
therefore goes through a random *condition* per lecture (one room, one microphone, one noise floor,
one speaker's pitch and rate — a lecture is one recording) and a small per-sentence wobble of
pitch and loudness. Out-of-domain sets use different, milder conditions (:data:`OOD`), so a score
on them is not a score on the training rooms.

Everything is drawn first into a plain :class:`Condition` (recorded in the manifests) from a numpy
Generator, then applied deterministically: audiomentations for pitch/time/noise (signalsmith
stretch, fast), pyroomacoustics for the room impulse response. audiomentations draws noise from
numpy's global generator, so :func:`_seeded` pins and restores it around each call.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from k2d.audio import SAMPLE_RATE


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges a :class:`Condition` is drawn from (uniform unless said otherwise)."""

    tempo: tuple[float, float] = (0.9, 1.1)  # per lecture: time stretch without pitch change
    pitch: tuple[float, float] = (-2.0, 2.0)  # per lecture: semitones
    pitch_wobble: float = 0.5  # per sentence: ± semitones around the lecture's pitch
    gain_wobble_db: float = 3.0  # per sentence: ± dB (speaker turns the head, steps back)
    snr_db: tuple[float, float] = (15.0, 35.0)
    noise_colors: tuple[str, ...] = ("white", "pink")
    reverb_p: float = 0.7
    rt60: tuple[float, float] = (0.2, 0.7)
    room: tuple[tuple[float, float], ...] = ((5.0, 12.0), (4.0, 10.0), (2.6, 3.6))  # x, y, z metres
    mic_distance: tuple[float, float] = (0.5, 3.0)
    lowpass_p: float = 0.3  # a cheap microphone / codec: band-limit to 3.5–7 kHz
    lowpass_hz: tuple[float, float] = (3500.0, 7000.0)
    # transmission after the room (0 = never, and then nothing more is drawn: older corpora keep their draws)
    telephone_p: float = 0.0  # a phone line: 8 kHz, 300-3400 Hz
    codec_p: float = 0.0  # a lossy round trip, e.g. a recording shared as MP3 or over a call as Opus
    codecs: tuple[str, ...] = ("mp3", "opus")
    codec_kbps: tuple[int, int] = (12, 48)


TRAIN = AugmentConfig()
# Out-of-domain sets: a different, milder acoustic world (brown noise, small rooms, no band-limit).
OOD = AugmentConfig(tempo=(0.95, 1.05), pitch=(-1.0, 1.0), pitch_wobble=0.3, gain_wobble_db=2.0, snr_db=(25.0, 40.0),
                    noise_colors=("brown",), reverb_p=0.5, rt60=(0.15, 0.35), room=((3.0, 5.0), (3.0, 4.5), (2.4, 3.0)),
                    mic_distance=(0.3, 1.0), lowpass_p=0.0)


@dataclass(frozen=True)
class Condition:
    """One recording condition, fully drawn: applying it twice gives the same samples."""

    seed: int
    tempo: float = 1.0
    pitch: float = 0.0
    snr_db: float | None = None
    noise_color: str = "white"
    rt60: float | None = None
    room: tuple[float, float, float] = (6.0, 5.0, 3.0)
    source: tuple[float, float, float] = (2.0, 2.5, 1.6)
    mic: tuple[float, float, float] = (3.0, 2.5, 1.2)
    lowpass_hz: float | None = None
    wobble: tuple[float, float] = field(default=(0.0, 0.0))  # (± semitones, ± dB) per sentence
    telephone: bool = False
    codec: str | None = None  # mp3 | opus
    codec_kbps: int | None = None

    def to_json(self) -> dict:
        """Plain JSON; the transmission fields only when used, so corpora from before them read the same."""
        def rounded(value):
            if isinstance(value, tuple | list):
                return [rounded(v) for v in value]
            return round(value, 3) if isinstance(value, float) else value

        later = {"telephone": False, "codec": None, "codec_kbps": None}
        return {k: rounded(v) for k, v in asdict(self).items() if k not in later or v != later[k]}


CLEAN = Condition(seed=0)


def draw_condition(rng: np.random.Generator, config: AugmentConfig = TRAIN) -> Condition:
    """Draw one recording condition (a lecture's, or an utterance's) from ``config``."""
    u = lambda pair: float(rng.uniform(*pair))  # noqa: E731
    room = tuple(u(r) for r in config.room)
    source = (u((1.0, room[0] - 1.0)), u((1.0, room[1] - 1.0)), u((1.4, 1.8)))
    distance, angle = u(config.mic_distance), u((0.0, 2 * np.pi))
    mic = tuple(float(np.clip(s + d, 0.3, r - 0.3)) for s, d, r in
                zip(source, (distance * np.cos(angle), distance * np.sin(angle), -0.4), room, strict=True))
    reverb = rng.random() < config.reverb_p
    lowpass = rng.random() < config.lowpass_p
    condition = Condition(
        seed=int(rng.integers(2**31)), tempo=u(config.tempo), pitch=u(config.pitch), snr_db=u(config.snr_db),
        noise_color=str(rng.choice(list(config.noise_colors))), rt60=u(config.rt60) if reverb else None,
        room=room, source=source, mic=mic, lowpass_hz=u(config.lowpass_hz) if lowpass else None,
        wobble=(config.pitch_wobble, config.gain_wobble_db),
    )
    if config.telephone_p > 0 and rng.random() < config.telephone_p:
        condition = replace(condition, telephone=True)
    if config.codec_p > 0 and rng.random() < config.codec_p:
        codec = str(rng.choice(list(config.codecs)))
        condition = replace(condition, codec=codec, codec_kbps=int(rng.integers(config.codec_kbps[0], config.codec_kbps[1] + 1)))
    return condition


@contextmanager
def _seeded(seed: int):
    """Pin Python's and numpy's global generators (audiomentations uses both), then restore them."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def pitch_shift(audio: np.ndarray, semitones: float) -> np.ndarray:
    """Shift pitch, keep duration (signalsmith stretch, through audiomentations)."""
    if abs(semitones) < 1e-3 or audio.size == 0:
        return audio
    from audiomentations import PitchShift

    with _seeded(0):
        return PitchShift(semitones, semitones, method="signalsmith_stretch", p=1.0)(audio, SAMPLE_RATE)


def time_stretch(audio: np.ndarray, rate: float) -> np.ndarray:
    """Speak ``rate`` times faster, keep pitch; the length changes by 1/rate."""
    if abs(rate - 1.0) < 1e-3 or audio.size == 0:
        return audio
    from audiomentations import TimeStretch

    with _seeded(0):
        stretch = TimeStretch(rate, rate, leave_length_unchanged=False, method="signalsmith_stretch", p=1.0)
        return stretch(audio, SAMPLE_RATE)


def room_impulse_response(condition: Condition) -> np.ndarray:
    """A shoebox room (pyroomacoustics image sources) with the condition's RT60, peak-normalised."""
    import pyroomacoustics as pra

    absorption, max_order = pra.inverse_sabine(condition.rt60, list(condition.room))
    room = pra.ShoeBox(list(condition.room), fs=SAMPLE_RATE, materials=pra.Material(absorption), max_order=min(max_order, 20))
    room.add_source(list(condition.source))
    room.add_microphone(list(condition.mic))
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float64)
    return (rir / max(float(np.abs(rir).max()), 1e-9)).astype(np.float32)


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve, keep the input's length and alignment (the direct path stays at the start)."""
    from scipy.signal import fftconvolve

    onset = int(np.argmax(np.abs(rir)))
    wet = fftconvolve(audio, rir[onset:])[: len(audio)]
    return (wet * (np.abs(audio).max() / max(float(np.abs(wet).max()), 1e-9))).astype(np.float32)


def add_noise(audio: np.ndarray, snr_db: float, color: str, seed: int) -> np.ndarray:
    """Coloured noise at an exact SNR against the signal (audiomentations AddColorNoise)."""
    from audiomentations import AddColorNoise

    with _seeded(seed):
        return AddColorNoise(min_snr_db=snr_db, max_snr_db=snr_db, min_f_decay=_DECAY[color], max_f_decay=_DECAY[color],
                             p=1.0)(audio, SAMPLE_RATE)


_DECAY = {"white": 0.0, "pink": -3.01, "brown": -6.02, "blue": 3.01}


def lowpass(audio: np.ndarray, cutoff_hz: float) -> np.ndarray:
    from audiomentations import LowPassFilter

    with _seeded(0):
        return LowPassFilter(cutoff_hz, cutoff_hz, p=1.0)(audio, SAMPLE_RATE)


def perturb_sentence(audio: np.ndarray, condition: Condition, rng: np.random.Generator) -> np.ndarray:
    """The speaker's side of one sentence: the condition's tempo and pitch plus a small per-sentence wobble."""
    semitones = condition.pitch + float(rng.uniform(-1, 1)) * condition.wobble[0]
    gain = 10 ** (float(rng.uniform(-1, 1)) * condition.wobble[1] / 20)
    return time_stretch(pitch_shift(audio, semitones), condition.tempo) * np.float32(gain)


TELEPHONE_BAND = (300.0, 3400.0)


def telephone(audio: np.ndarray) -> np.ndarray:
    """A phone line: down to 8 kHz and back (nothing above 4 kHz survives) and the 300-3400 Hz voice band."""
    from scipy.signal import butter, sosfilt

    from k2d.audio import resample

    narrow = resample(audio.astype(np.float32), SAMPLE_RATE, 8000)
    sos = butter(4, TELEPHONE_BAND, btype="bandpass", fs=8000, output="sos")
    back = resample(sosfilt(sos, narrow).astype(np.float32), 8000, SAMPLE_RATE)
    return _same_length(back, len(audio))


_CODEC = {"mp3": ("mp3", "libmp3lame", "fltp"), "opus": ("ogg", "libopus", "flt")}


def codec_round_trip(audio: np.ndarray, codec: str, kbps: int) -> np.ndarray:
    """Encode at ``kbps`` and decode again (PyAV, in memory): the smearing and band loss of a lossy file or call.
    The containers carry the encoder delay (LAME's gapless header, Opus pre-skip), so the decoded audio stays
    aligned; its length is then cut or padded to the input's."""
    import io

    import av

    from k2d.audio import decode_audio

    container_format, encoder, sample_format = _CODEC[codec]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream(encoder, rate=SAMPLE_RATE, layout="mono")
        stream.bit_rate = kbps * 1000
        frame = av.AudioFrame.from_ndarray(np.clip(audio, -1, 1).astype(np.float32)[None, :], format=sample_format,
                                           layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in (*stream.encode(frame), *stream.encode(None)):
            container.mux(packet)
    buffer.seek(0)
    return _same_length(decode_audio(buffer), len(audio))


def _same_length(audio: np.ndarray, length: int) -> np.ndarray:
    audio = audio[:length]
    return np.pad(audio, (0, length - len(audio))).astype(np.float32)


def apply_channel(audio: np.ndarray, condition: Condition) -> np.ndarray:
    """The recording side of a whole signal: room, microphone band-limit, noise floor, then the transmission
    (phone line, lossy codec) when the condition has one. Length preserved."""
    out = audio.astype(np.float32)
    if condition.rt60 is not None:
        out = reverberate(out, room_impulse_response(condition))
    if condition.lowpass_hz is not None:
        out = lowpass(out, condition.lowpass_hz)
    if condition.snr_db is not None and np.abs(out).max() > 0:
        out = add_noise(out, condition.snr_db, condition.noise_color, condition.seed)
    if condition.telephone:
        out = telephone(out)
    if condition.codec is not None:
        out = codec_round_trip(out, condition.codec, condition.codec_kbps or 32)
    return np.nan_to_num(out).astype(np.float32)

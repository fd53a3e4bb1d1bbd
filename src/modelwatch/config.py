"""Configuration: strict YAML, validated by pydantic, every problem reported at once.

A config is one YAML file plus the files its ``include:`` globs name. Loading
expands ``${VAR}`` (and ``${VAR:-default}``) in string values, applies
``defaults:`` to every probe, validates each piece strictly (unknown keys are
errors) and then checks what spans pieces: providers that targets name, probe
kinds the provider type supports, duplicate names. Problems are collected as
``file: key.path: reason`` lines and raised together as :class:`ConfigError`.

Provider types, kinds and which options apply to which probes are not listed
here: they are read from the probe registry (:mod:`modelwatch.probes`).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import stat
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from modelwatch.job import ProbeJob
from modelwatch.probes import (PROBE_APIS, PROBE_KINDS, PROVIDER_TYPES, PROVIDERS, api_problem, default_api,
                               option_problem, spec_for, supported_kinds, webrtc_provider_types)
from modelwatch.probes.audio import DEFAULT_VOICE
from modelwatch.secrets import Secret, register_secret
from modelwatch.shards import parse_shard, shard_of
from modelwatch.validation import Problems as _Problems
from modelwatch.validation import parse_listen
# MAX_YAML_* stay importable from here, where they were defined.
from modelwatch.yamlfile import read_small_file, read_yaml

DEFAULT_PATH = "/etc/modelwatch/modelwatch.yaml"
# Request fields the probe sets itself: extra_body may add fields, never change what is measured or billed.
EXTRA_BODY_RESERVED = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n",
    "reasoning_effort", "input", "max_output_tokens"})
EXTRA_BODY_MAX_BYTES = 2048
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
MAX_DURATION_S = 3650 * 86400.0  # ten years: beyond any retention, and finite
MIN_DURATION_S = 0.001
MAX_CONFIG_BYTES = 1_048_576  # a config or included file
MAX_KEY_FILE_BYTES = 65_536
MAX_TURNS = 100  # a conversation probe's turns: enough to see a session age, bounded in cost
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")  # an HTTP header name (RFC 9110 token)
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ConfigError(Exception):
    """One or more configuration problems, each ``file: path: reason``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_duration(value: Any) -> float:
    """Seconds from ``500ms``, ``30s``, ``5m``, ``1h``, ``30d`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 500ms, 30s, 5m, 1h or 30d")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value)[:64])
        if not match:
            raise ValueError("must be a duration such as 500ms, 30s, 5m, 1h or 30d")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if math.isnan(seconds):
        raise ValueError("must be a duration such as 500ms, 30s, 5m, 1h or 30d")
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    if seconds < MIN_DURATION_S:
        raise ValueError("must be at least 1ms")
    if seconds > MAX_DURATION_S:
        raise ValueError("must be at most 3650d")
    return seconds


def _within(low: float, high: float) -> Any:
    """A validator bounding a duration to [low, high] seconds, both named in its message."""
    def check(v: float | None) -> float | None:
        if v is not None and not low <= v <= high:
            raise ValueError(f"must be from {format_duration(low)} to {format_duration(high)}")
        return v
    return check


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration, for messages and docs."""
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{round(seconds * 1000)}ms"


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Strict):
    """Where results are written, how long raw rows and hourly rollups are kept."""

    path: Path = Path("/var/lib/modelwatch/modelwatch.db")
    retention: Duration = 30 * 86400.0
    rollup_retention: Duration = 400 * 86400.0

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            raise ValueError("must be the path of the SQLite database file")
        return v

    @field_validator("path")
    @classmethod
    def _a_file(cls, v: Path) -> Path:
        # Checked here, not when opening: SQLite's own message would not name the path.
        if "\x00" in str(v):
            raise ValueError("must not contain NUL")
        try:
            mode = v.stat().st_mode
        except FileNotFoundError:
            return v
        except OSError as exc:
            raise ValueError(f"{v} cannot be used: {exc.strerror or exc}") from None
        if stat.S_ISDIR(mode):
            raise ValueError(f"{v} is a directory; name the database file in it, e.g. {v / 'modelwatch.db'}")
        if not stat.S_ISREG(mode):
            raise ValueError(f"{v} is not a regular file")
        return v

    @field_validator("rollup_retention")
    @classmethod
    def _rollups_outlive_raw_rows(cls, v: float, info: ValidationInfo) -> float:
        # Reports over ranges older than the raw rows read rollups: they must still be there.
        retention = info.data.get("retention")
        if retention is not None and v < retention:
            raise ValueError(f"must be at least storage.retention ({format_duration(retention)})")
        return v


class ServerConfig(_Strict):
    """The daemon's HTTP endpoint (/metrics, /-/healthy, /-/reload when enabled)."""

    listen: str = "127.0.0.1:9477"
    # Like Prometheus' --web.enable-lifecycle: anyone who reaches the port could reload.
    enable_reload: bool = False

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v


def _fraction(value: Any) -> Any:
    """0.995, or "99.5%"."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100
        except ValueError:
            raise ValueError("must be a fraction such as 0.99 or a percentage such as 99%") from None
    return value


Fraction = Annotated[float, BeforeValidator(_fraction), Field(gt=0, le=1)]
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


class StatusThresholds(_Strict):
    """Provider availability below which a probe (or a day's bar) is degraded, partial or major outage."""

    degraded: Fraction = 0.99
    partial_outage: Fraction = 0.90
    major_outage: Fraction = 0.50

    @model_validator(mode="after")
    def _ordered(self) -> StatusThresholds:
        if not self.degraded >= self.partial_outage >= self.major_outage:
            raise ValueError("must not increase: degraded >= partial_outage >= major_outage")
        return self


def _origins(allowed: tuple[str, ...]) -> Any:
    def check(values: list[str]) -> list[str]:
        for value in values:
            if value not in allowed and not _ORIGIN.match(value):
                raise ValueError(f"{value[:80]!r} is not an origin such as https://example.com"
                                 f" (or one of {', '.join(allowed)})")
        return values
    return AfterValidator(check)


class StatusConfig(_Strict):
    """The status page, embeds, badges and JSON API served on server.listen (docs/status-page.md)."""

    enabled: bool = True
    title: str = Field("Model availability", min_length=1, max_length=120)
    min_runs: int = Field(5, ge=1, le=100_000)
    state_runs: int = Field(10, ge=1, le=1000)
    incident_failures: int = Field(3, ge=1, le=1000)
    thresholds: StatusThresholds = StatusThresholds()
    refresh: Annotated[Duration, AfterValidator(_within(1.0, 3600.0))] = 15.0
    @field_validator("title")
    @classmethod
    def _one_line(cls, v: str) -> str:
        if _HEADER_VALUE_BAD.search(v) or "\t" in v:
            raise ValueError("must be one line of text")
        return v

    # Who may put /embed/ pages in an <iframe> (CSP frame-ancestors); every other page: nobody.
    frame_ancestors: Annotated[list[str], _origins(("*", "'self'", "'none'"))] = Field(
        default_factory=lambda: ["*"], min_length=1, max_length=50)
    # Origins whose scripts may read the JSON API and badge JSON (CORS); none by default.
    cors_origins: Annotated[list[str], _origins(("*",))] = Field(default_factory=list, max_length=50)


class BudgetConfig(_Strict):
    """A daily spending limit for paid probes (UTC days)."""

    daily_usd: float = Field(gt=0, le=1_000_000)


class ProbeSettings(_Strict):
    """Probe fields that ``defaults:`` may set for every probe."""

    interval: Annotated[Duration, AfterValidator(_within(0.1, 30 * 86400.0))] = 60.0
    timeout: Annotated[Duration, AfterValidator(_within(0.01, 3600.0))] = 30.0
    connect_timeout: Annotated[Duration, AfterValidator(_within(0.01, 3600.0))] | None = None
    ttft_timeout: Annotated[Duration, AfterValidator(_within(0.01, 3600.0))] | None = None
    prompt: str = Field("Say OK", min_length=1, max_length=2000)
    max_tokens: int = Field(16, ge=1, le=4096)
    max_tokens_field: Literal["max_completion_tokens", "max_tokens"] | None = None
    max_response_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576)
    enabled: bool = True
    modality: Literal["text", "audio"] = "text"
    interface: Literal["ga", "beta"] = "ga"
    voice: str = Field(DEFAULT_VOICE, min_length=1, max_length=64)
    api: Literal[PROBE_APIS] = "chat"  # type: ignore[valid-type] - the registry's wire APIs
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    thinking_budget: int | None = Field(None, ge=0, le=32768)
    thinking_level: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None
    extra_body: dict[str, Any] | None = None
    # Voice-agent kinds (docs/probes.md): the speech models of a voice chain, and its audio format.
    stt_model: str | None = Field(None, min_length=1, max_length=128)
    tts_model: str | None = Field(None, min_length=1, max_length=128)
    stt_stream: bool | None = None
    tts_format: Literal["pcm", "wav", "mp3", "opus", "aac", "flac"] | None = None
    tts_stream_format: Literal["audio", "sse"] | None = None
    turns: int | None = Field(None, ge=1, le=MAX_TURNS)
    interrupt_after: Annotated[Duration, AfterValidator(_within(0.01, 60.0))] | None = None
    # Realtime over WebRTC (docs/probes.md): the transport, how the call is signalled, ICE servers.
    transport: Literal["websocket", "webrtc"] | None = None
    signalling: Literal["ephemeral", "multipart"] | None = None
    ice_servers: list[str] | None = Field(None, max_length=4)

    @field_validator("ice_servers")
    @classmethod
    def _ice_servers(cls, v: list[str] | None) -> list[str] | None:
        for url in v or ():
            if not re.match(r"^(stun|turns?):[A-Za-z0-9.\-\[\]:]+(\?transport=(udp|tcp))?$", url):
                raise ValueError(f"{url[:80]!r} is not a STUN or TURN URL such as stun:stun.example.com:3478")
        return v

    @field_validator("extra_body")
    @classmethod
    def _extra_body(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        reserved = sorted(set(v) & EXTRA_BODY_RESERVED)
        if reserved:
            raise ValueError(f"must not set {', '.join(reserved)}: the probe owns those fields")
        try:
            body = json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):  # a YAML date or timestamp, .nan, .inf
            raise ValueError("must hold only JSON values: strings (quote dates), numbers, true/false, "
                             "null, lists and mappings") from None
        if len(body) > EXTRA_BODY_MAX_BYTES:
            raise ValueError(f"is too large (at most {EXTRA_BODY_MAX_BYTES} bytes of JSON)")
        return v


ProbeKind = Literal[PROBE_KINDS]  # type: ignore[valid-type] - the registry's kinds


class ProbeConfig(ProbeSettings):
    """One probe of a target: its kind plus any probe setting."""

    kind: ProbeKind

    @model_validator(mode="after")
    def _interrupt_needs_audio(self) -> ProbeConfig:
        if self.interrupt_after is not None and self.modality != "audio":
            raise ValueError("interrupt_after needs modality: audio (barge-in interrupts a spoken answer)")
        return self


class ProviderConfig(_Strict):
    """An API endpoint and its credentials."""

    type: Literal[PROVIDER_TYPES]  # type: ignore[valid-type] - the registry's provider types
    base_url: str
    api_key: Secret | None = None
    api_key_file: Path | None = None
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    api_version: str | None = Field(None, min_length=1, max_length=64)
    auth_style: Literal["bearer", "x-api-key"] | None = None
    # required: an answer that ends without a finish/stop reason was cut off (protocol_error).
    finish_reason: Literal["required", "optional"] = "required"
    max_concurrent_probes: int = Field(8, ge=1, le=1000)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        if "@" in v.split("/", 3)[2]:
            raise ValueError("must not contain credentials; use api_key or api_key_file")
        if "?" in v or "#" in v:
            # A key would end up in every URL the probe logs (e.g. Gemini's ?key=).
            raise ValueError("must not contain a query (?) or fragment (#); keys go in api_key or api_key_file")
        if re.search(r"[\x00-\x20\x7f]", v):
            raise ValueError("must not contain spaces or control characters")
        try:
            port = urllib.parse.urlsplit(v).port
        except ValueError:
            port = 0
        if port == 0:
            raise ValueError("has an invalid port (a number from 1 to 65535)")
        return v.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _TOKEN.match(name):
                raise ValueError(f"header name {name[:64]!r} is not a valid HTTP header name")
            if name.lower() in ("authorization", "proxy-authorization", "api-key", "x-api-key",
                                "x-goog-api-key"):
                raise ValueError(f"header {name!r} carries a key; use api_key or api_key_file")
            if _HEADER_VALUE_BAD.search(value):
                raise ValueError(f"header {name!r} must be one line without control characters")
            # A custom header may carry a credential (Ocp-Apim-Subscription-Key, X-Gateway-Key,
            # Cookie): every value is redacted from error texts, logs and SQLite like a key. Of a
            # cookie-style "name=value; ..." only the values: a name ("session") is ordinary text.
            pairs = [p.partition("=") for p in value.split(";")]
            if all(sep for _, sep, _ in pairs):
                for _, _, secret in pairs:
                    register_secret(secret)
            else:
                register_secret(value)
        return v


class StagePrice(_Strict):
    """What a voice chain's speech model costs: USD per million tokens, or per minute of audio."""

    input: float = Field(0, ge=0)
    output: float = Field(0, ge=0)
    audio_input: float | None = Field(None, ge=0)
    audio_output: float | None = Field(None, ge=0)
    # Duration-billed models (whisper-1, tts-1), and the fallback when no usage is reported.
    per_minute: float | None = Field(None, ge=0)


class PriceConfig(_Strict):
    """What the model costs, in USD per million tokens (a voice chain adds its speech models')."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    audio_input: float | None = Field(None, ge=0)
    audio_output: float | None = Field(None, ge=0)
    stt: StagePrice | None = None
    tts: StagePrice | None = None


class TargetConfig(_Strict):
    """A model on a provider and the probes that watch it."""

    name: str = Field(pattern=_NAME)
    provider: str
    model: str = Field(min_length=1)
    price: PriceConfig | None = None
    probes: list[ProbeConfig] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _path_safe(cls, v: str) -> str:
        # The name is a path in the status site's URLs and static export (targets/NAME/index.html).
        if any(part in ("", ".", "..") for part in v.split("/")):
            raise ValueError("must not have an empty, . or .. part between slashes")
        return v


@dataclasses.dataclass(frozen=True)
class Config:
    """A loaded, valid configuration."""

    path: Path
    storage: StorageConfig
    server: ServerConfig
    location: str | None
    max_concurrent_probes: int
    providers: dict[str, ProviderConfig]
    jobs: tuple[ProbeJob, ...]
    budget: BudgetConfig | None = None
    status: StatusConfig = StatusConfig()
    # ``shard: i/N``: this daemon probes shard i of N (``jobs`` holds its share; modelwatch.shards).
    shard: tuple[int, int] | None = None


_TOP_KEYS = {"storage", "server", "location", "shard", "defaults", "include", "providers", "targets",
             "max_concurrent_probes", "budget", "status"}
_INCLUDE_KEYS = {"include", "providers", "targets"}


@dataclasses.dataclass
class _Pieces:
    """What the files contribute, each piece remembering the file it came from."""

    providers: dict[str, tuple[Path, Any]] = dataclasses.field(default_factory=dict)
    targets: list[tuple[Path, int, Any]] = dataclasses.field(default_factory=list)
    visited: set[Path] = dataclasses.field(default_factory=set)


def _read_yaml(file: Path, problems: _Problems) -> dict | None:
    return read_yaml(file, problems, MAX_CONFIG_BYTES)


def _expand_env(value: Any, file: Path, path: str, problems: _Problems) -> Any:
    """Expand ``${VAR}`` in every string of a parsed YAML tree."""
    if isinstance(value, str):
        def sub(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            problems.add(file, path, f"environment variable {name} is not set")
            problems.unset.add((file, path))
            return ""
        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, file, f"{path}.{k}" if path else str(k), problems)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, file, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _gather(file: Path, data: dict, pieces: _Pieces, problems: _Problems, allowed: set[str]) -> None:
    """Record a file's providers and targets, then follow its includes."""
    if data and allowed is _INCLUDE_KEYS and not set(map(str, data)) & _INCLUDE_KEYS:
        # Not a config file at all (include: [/etc/shadow]): naming its "keys" would print its lines.
        problems.add(file, "", "is not a modelwatch config file (it has none of include:, providers:, targets:)")
        return
    for key in data:
        if key not in allowed:
            reason = "unknown key" if key not in _TOP_KEYS else "not allowed in an included file"
            problems.add(file, str(key)[:128], reason)
    providers = data.get("providers") or {}
    if not isinstance(providers, dict):
        problems.add(file, "providers", "must be a mapping of provider name to provider")
        providers = {}
    for name, raw in providers.items():
        if not (isinstance(name, str) and re.match(_NAME, name)):
            problems.add(file, "providers", f"provider name {str(name)[:64]!r} must be letters, digits and "
                         ". _ : / - (at most 128, starting with a letter or digit)")
            continue
        if name in pieces.providers:
            problems.add(file, f"providers.{name}",
                         f"provider already defined in {pieces.providers[name][0]}")
        else:
            pieces.providers[str(name)] = (file, raw)
    targets = data.get("targets") or []
    if not isinstance(targets, list):
        problems.add(file, "targets", "must be a list of targets")
        targets = []
    pieces.targets.extend((file, i, raw) for i, raw in enumerate(targets))
    includes = data.get("include") or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list):
        problems.add(file, "include", "must be a list of paths or globs")
        return
    for i, pattern in enumerate(includes):
        _include(file, f"include[{i}]", str(pattern), pieces, problems)


def _include(file: Path, path: str, pattern: str, pieces: _Pieces, problems: _Problems) -> None:
    full = pattern if os.path.isabs(pattern) else str(file.parent / pattern)
    if glob.has_magic(full):
        matches = sorted(glob.glob(full))
    elif os.path.exists(full):
        matches = [full]
    else:
        problems.add(file, path, f"included file {pattern} does not exist")
        return
    for match in matches:
        child = Path(match)
        if child.resolve() in pieces.visited:
            continue
        pieces.visited.add(child.resolve())
        data = _read_yaml(child, problems)
        if data is not None:
            data = _expand_env(data, child, "", problems)
            _gather(child, data, pieces, problems, _INCLUDE_KEYS)


def _validate(model: type[BaseModel], raw: Any, file: Path, path: str, problems: _Problems) -> Any:
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        problems.from_validation(file, path, exc)
        return None


def _provider(name: str, file: Path, raw: Any, problems: _Problems
              ) -> tuple[ProviderConfig, Secret | None] | None:
    path = f"providers.{name}"
    provider = _validate(ProviderConfig, raw, file, path, problems)
    if provider is None:
        return None
    if provider.api_key and provider.api_key_file:
        problems.add(file, path, "set api_key or api_key_file, not both")
        return None
    if provider.auth_style is not None and "auth_style" not in PROVIDERS[provider.type].provider_keys:
        owners = [p.name for p in PROVIDERS.values() if "auth_style" in p.provider_keys]
        problems.add(file, f"{path}.auth_style", f"applies to {', '.join(owners)} providers only")
        return None
    key = provider.api_key
    if provider.api_key_file:
        key = _read_key_file(file, path, provider.api_key_file, problems)
    elif key is None and PROVIDERS[provider.type].needs_key:
        problems.add(file, path, f"provider type {provider.type} needs api_key or api_key_file")
        return None
    return provider, key


def _read_key_file(file: Path, path: str, key_file: Path, problems: _Problems) -> Secret | None:
    full = key_file if key_file.is_absolute() else file.parent / key_file
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not key_file.is_absolute() and creds and (Path(creds) / key_file).exists():
        full = Path(creds) / key_file
    where = f"{path}.api_key_file"
    try:
        text = read_small_file(full, MAX_KEY_FILE_BYTES).decode("utf-8")
    except OSError as exc:
        problems.add(file, where, f"cannot read {full}: {exc.strerror or exc}")
        return None
    except UnicodeDecodeError:
        problems.add(file, where, f"{full} is not UTF-8 text")
        return None
    except ValueError as exc:
        problems.add(file, where, f"{full} {exc}")
        return None
    if not text.strip():
        problems.add(file, where, f"{full} holds no key")
        return None
    try:
        return Secret(text)
    except ValueError:  # the reason, never the content: it may be any file
        problems.add(file, where, f"{full} must hold one key on one line, without spaces")
    return None


def load_config(path: str | os.PathLike, *, whole: bool = False) -> Config:
    """Load, expand, validate and resolve a config file and its includes.

    With ``shard: i/N`` the jobs are this shard's share, unless ``whole`` (``check-config
    --shards`` plans over every probe).
    """
    file = Path(path)
    problems = _Problems()
    data = _read_yaml(file, problems)
    if data is None:
        raise ConfigError(problems.lines)
    data = _expand_env(data, file, "", problems)
    pieces = _Pieces(visited={file.resolve()})
    _gather(file, data, pieces, problems, _TOP_KEYS)

    storage = _validate(StorageConfig, data.get("storage"), file, "storage", problems)
    server = _validate(ServerConfig, data.get("server"), file, "server", problems)
    status = _validate(StatusConfig, data.get("status"), file, "status", problems)
    budget = None
    if data.get("budget") is not None:
        budget = _validate(BudgetConfig, data["budget"], file, "budget", problems)
    defaults = _validate(ProbeSettings, data.get("defaults"), file, "defaults", problems)
    default_values = defaults.model_dump(exclude_unset=True) if defaults else {}
    location = data.get("location")
    if location is not None and not (isinstance(location, str) and re.match(_NAME, location)):
        problems.add(file, "location", "must be a short name such as eu-west")
    max_concurrent = data.get("max_concurrent_probes", 64)
    if not isinstance(max_concurrent, int) or isinstance(max_concurrent, bool) or not 1 <= max_concurrent <= 10000:
        problems.add(file, "max_concurrent_probes", "must be a whole number from 1 to 10000")

    providers: dict[str, tuple[ProviderConfig, Secret | None]] = {}
    for name, (pfile, raw) in pieces.providers.items():
        resolved = _provider(name, pfile, raw, problems)
        if resolved:
            providers[name] = resolved

    shard = None
    if data.get("shard") is not None:
        try:
            shard = parse_shard(data["shard"])
        except ValueError as exc:
            problems.add(file, "shard", str(exc))

    jobs = _resolve_targets(pieces, providers, default_values, location, problems)
    if problems.lines:
        raise ConfigError(problems.lines)
    if shard is not None and not whole:
        jobs = [j for j in jobs if shard_of(j.target, j.probe.kind, shard[1]) == shard[0]]
    return Config(path=file, storage=storage, server=server, location=location,
                  max_concurrent_probes=max_concurrent,
                  providers={n: p for n, (p, _) in providers.items()}, jobs=tuple(jobs), budget=budget,
                  status=status, shard=shard)


def _resolve_targets(pieces: _Pieces, providers: dict, default_values: dict, location: str | None,
                     problems: _Problems) -> list[ProbeJob]:
    jobs: list[ProbeJob] = []
    seen: dict[str, Path] = {}
    for file, index, raw in pieces.targets:
        path = f"targets[{index}]"
        explicit: list[set] = []
        if isinstance(raw, dict) and isinstance(raw.get("probes"), list):
            explicit = [set(p) if isinstance(p, dict) else set() for p in raw["probes"]]
            raw = {**raw, "probes": [{**default_values, **p} if isinstance(p, dict) else p
                                     for p in raw["probes"]]}
        target = _validate(TargetConfig, raw, file, path, problems)
        if target is None:
            continue
        if target.name in seen:
            problems.add(file, f"{path}.name", f"target {target.name} is already defined in {seen[target.name]}")
            continue
        seen[target.name] = file
        if target.provider not in providers:
            if target.provider not in pieces.providers:
                problems.add(file, f"{path}.provider", f"no provider named {target.provider}")
            continue
        provider, key = providers[target.provider]
        kinds: set[str] = set()
        for i, probe in enumerate(target.probes):
            ppath = f"{path}.probes[{i}]"
            if probe.kind in kinds:
                problems.add(file, f"{ppath}.kind",
                             f"target {target.name} already has a {probe.kind} probe; use a second target")
                continue
            kinds.add(probe.kind)
            if probe.kind not in supported_kinds(provider.type):
                have = ", ".join(sorted(supported_kinds(provider.type))) or "none yet"
                problems.add(file, f"{ppath}.kind",
                             f"provider type {provider.type} has no {probe.kind} probe (supported: {have})")
                continue
            problem = api_problem(provider.type, probe.kind, probe.api)
            if problem and "api" not in explicit[i]:
                # a default that does not apply here
                probe = probe.model_copy(update={"api": default_api(provider.type, probe.kind)})
            elif problem:
                problems.add(file, f"{ppath}.api", problem)
                continue
            problem = _option_problem(provider.type, probe)
            if problem:
                problems.add(file, f"{ppath}.{problem[0]}", problem[1])
                continue
            problem = _price_problem(probe, target.price)
            if problem:
                problems.add(file, f"{path}.price", problem)
                continue
            if probe.enabled:
                jobs.append(ProbeJob(target.name, target.provider, provider, key, target.model,
                                     probe, location, target.price))
    return jobs


def _option_problem(provider_type: str, probe: ProbeConfig) -> tuple[str, str] | None:
    """An option the probe cannot honour, as (option, reason): the spec says where each applies."""
    if probe.thinking_level is not None and probe.thinking_budget is not None:
        return "thinking_level", "set thinking_level or thinking_budget, not both (Gemini refuses both)"
    if probe.kind == "conversation" and probe.api != "realtime" and probe.modality == "audio":
        return "modality", "a REST conversation is text; spoken turns need api: realtime"
    if probe.transport is not None and spec_for(provider_type, probe.kind, probe.api, probe.transport) is None:
        types = webrtc_provider_types()
        named = types[0] if len(types) == 1 else f"{', '.join(types[:-1])} and {types[-1]}"
        return "transport", f"transport: {probe.transport} applies to realtime probes of {named} providers"
    if (probe.signalling is not None or probe.ice_servers is not None) and probe.transport != "webrtc":
        option = "signalling" if probe.signalling is not None else "ice_servers"
        return option, f"{option} applies to probes with transport: webrtc"
    return option_problem(spec_for(provider_type, probe.kind, probe.api, probe.transport), provider_type, probe)


def _price_problem(probe: ProbeConfig, price: PriceConfig | None) -> str | None:
    """A priced voice chain must price its speech models too: otherwise its cost is a guess."""
    if probe.kind == "voice-chain" and price is not None and (price.stt is None or price.tts is None):
        return ("a voice-chain target's price needs stt and tts entries (its transcription and speech "
                "models' prices) beside the chat model's input and output")
    return None


def default_config_path() -> str:
    """``$MODELWATCH_CONFIG``, else the system path."""
    return os.environ.get("MODELWATCH_CONFIG") or DEFAULT_PATH

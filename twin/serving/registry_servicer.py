"""``alutwin.v1.ModelRegistry``: a thin servicer over a :class:`~twin.registry.ModelRegistry`; the messages are
the :mod:`twin.results` types' ``to_pb``."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Iterator, Sequence

import grpc

from alutwin.rpc import open_or_abort
from alutwin.v1 import twin_pb2, twin_pb2_grpc
from twin.registry import (
    DEFAULT_ALIAS,
    InvalidRequest,
    ModelRecord,
    ModelRegistry,
    ServedModel,
    WatchClosed,
    model_summaries,
)
from twin.results import ExportedModel, ModelId, ModelSummary, VersionInfo
from twin.serving.runtime import TwinRuntime, status_of, unary

__all__ = ["REGISTRY_SERVICE", "RegistryServicer", "version_info"]

REGISTRY_SERVICE = twin_pb2.DESCRIPTOR.services_by_name["ModelRegistry"].full_name
"""``"alutwin.v1.ModelRegistry"``."""

_PAGE_TOKEN_KIND = "alutwin.v1.ListModels"


def list_page(models: Sequence[ModelSummary], page_size: int, page_token: str) -> tuple[list[ModelSummary], str]:
    """One page of ``models`` (sorted by name): at most ``page_size`` (0: all) after the name ``page_token``
    names, and the token of the next page ("" after the last). A token names the last model listed, so pages
    stay right when models are added or removed in between (each model is listed once)."""
    after = _token_name(page_token) if page_token else None
    rest = [m for m in models if after is None or m.name > after]
    if page_size == 0 or len(rest) <= page_size:
        return list(rest), ""
    page = list(rest[:page_size])
    return page, _page_token(page[-1].name)


def _page_token(name: str) -> str:
    text = json.dumps({"kind": _PAGE_TOKEN_KIND, "after": name}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _token_name(token: str) -> str:
    bad = InvalidRequest(f"page_token {token[:64]!r} is not a next_page_token of ListModels", field="page_token")
    try:
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(doc, dict) or doc.get("kind") != _PAGE_TOKEN_KIND or not isinstance(doc.get("after"), str):
        raise bad
    return str(doc["after"])


_POLL_S = 0.25  # how often a waiting Watch stream checks that its client is still there


def version_info(registry: ModelRegistry, served: ServedModel, model: ModelId) -> VersionInfo:
    """The metadata of a served version (``GetModel``); ``model`` is that version as the call named it."""
    manifest = served.loaded.manifest
    weights = served.surrogate.weights
    arch = weights.architecture
    rec = registry.state.models.get(served.name, ModelRecord())
    vrec = rec.versions.get(served.version)
    return VersionInfo(
        model=model,
        aliases=tuple(sorted(a for a, v in rec.aliases.items() if v == served.version)),
        kind=served.loaded.kind,
        prior=served.surrogate.prior,
        n_members=served.n_members,
        hidden=tuple(arch.hidden),
        skip=arch.skip,
        blocks=arch.blocks,
        dt=served.dt,
        exactly_sparse=weights.masks is not None,
        nonzero_weights=int(weights.nonzero().sum()),
        total_weights=arch.n_weights * served.n_members,
        created=manifest["created"],
        registered=vrec.registered if vrec else "",
        description=vrec.description if vrec else "",
        weights_sha256=manifest["weights"]["sha256"],
        loaded=registry.is_loaded(served.name, served.version),
        n_in=arch.n_in,
        n_out=arch.n_out,
    )


class RegistryServicer(twin_pb2_grpc.ModelRegistryServicer):
    """Converts ModelRegistry messages to :class:`~twin.registry.ModelRegistry` calls and back."""

    def __init__(self, runtime: TwinRuntime) -> None:
        self.runtime = runtime

    @property
    def registry(self) -> ModelRegistry:
        return self.runtime.registry

    @unary
    def ListModels(
        self, request: twin_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> twin_pb2.ListModelsResponse:
        state = self.registry.state
        models = sorted(model_summaries(state), key=lambda m: m.name)
        page, next_token = list_page(models, request.page_size, request.page_token)
        return twin_pb2.ListModelsResponse(
            models=[m.to_pb() for m in page], revision=state.revision, next_page_token=next_token
        )

    @unary
    def GetModel(self, request: twin_pb2.GetModelRequest, context: grpc.ServicerContext) -> twin_pb2.ModelVersionInfo:
        served, model = self.runtime.resolve(request.model)
        return version_info(self.registry, served, model).to_pb()

    @unary
    def ExplainModel(
        self, request: twin_pb2.ExplainModelRequest, context: grpc.ServicerContext
    ) -> twin_pb2.ModelExplanation:
        served, model = self.runtime.resolve(request.model)
        return dataclasses.replace(served.explanation, model=model).to_pb()

    @unary
    def ExportModel(
        self, request: twin_pb2.ExportModelRequest, context: grpc.ServicerContext
    ) -> twin_pb2.ExportModelResponse:
        served, model = self.runtime.resolve(request.model)
        return ExportedModel(model, served.manifest_bytes, served.weights_bytes).to_pb()

    @unary
    def RegisterModel(
        self, request: twin_pb2.RegisterModelRequest, context: grpc.ServicerContext
    ) -> twin_pb2.RegisterModelResponse:
        served, revision = self.registry.register(
            request.name,
            request.manifest_json,
            request.weights,
            set_alias=request.set_alias,
            description=request.description,
        )
        model = ModelId(served.name, served.version, request.set_alias)
        return twin_pb2.RegisterModelResponse(model=model.to_pb(), revision=revision)

    @unary
    def SetAlias(self, request: twin_pb2.SetAliasRequest, context: grpc.ServicerContext) -> twin_pb2.SetAliasResponse:
        if request.version == 0:
            raise InvalidRequest("version must be >= 1 (versions count from 1)")
        expected = request.expected_version if request.HasField("expected_version") else None
        previous, revision = self.registry.set_alias(request.name, request.alias, request.version, expected)
        return twin_pb2.SetAliasResponse(previous_version=previous, revision=revision)

    @unary
    def Rollback(self, request: twin_pb2.RollbackRequest, context: grpc.ServicerContext) -> twin_pb2.RollbackResponse:
        version, left, revision = self.registry.rollback(request.name, request.alias or DEFAULT_ALIAS)
        return twin_pb2.RollbackResponse(version=version, rolled_back_from=left, revision=revision)

    def Watch(self, request: twin_pb2.WatchRequest, context: grpc.ServicerContext) -> Iterator[twin_pb2.RegistryEvent]:
        watcher = open_or_abort(status_of, context, lambda: self.registry.watch(request.name))
        context.add_callback(watcher.close)  # wakes the loop below when the client goes away
        try:
            while True:
                try:
                    event = watcher.get(_POLL_S)
                except WatchClosed:
                    return
                if event is None:
                    if not context.is_active():
                        return
                    continue
                yield event.to_pb()
        finally:
            self.registry.unwatch(watcher)

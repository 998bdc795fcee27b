"""``inference.GRPCInferenceService``: the Open Inference Protocol's RPCs over the same service layer as HTTP.

Every RPC goes through :meth:`InferenceServicer._serve`: its metadata becomes the call's context
(``app.grpc.context.call_context``), the API key is checked (every RPC needs one when keys are set, as every /v2 route
does over HTTP), and any failure leaves with the status and trailing metadata of the one table
(``app.grpc.status``). ModelInfer goes through the prediction service like HTTP's infer: same routing, admission,
batching, deadlines and metrics (endpoint ``grpc_infer``); a refusal the service never saw (a message that does
not parse, an unknown model, a missing key) is counted in xnli_requests_total here, as HTTP counts its own.

Deadlines: what is left of the call's deadline, less a margin for the answer's way back, is the request's timeout
(it may only shorten the server's and the request's own ``timeout`` parameter). Cancellation: a client that cancels
(or whose deadline passes first) gets its queued pairs dropped and is counted ``disconnected``, as over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from app import metrics
from app.engine.backends import get_backend
from app.engine.contract import EngineResult
from app.engine.errors import DeadlineExceededError, OverloadedError
from app.engine.status import RepositoryEntry, RepositoryState
from app.grpc import messages, status
from app.grpc.context import TRACEPARENT_KEY, CallContext, call_context
from app.grpc.proto import open_inference_pb2 as pb
from app.metrics import Outcome
from app.service import health, zero_shot
from app.service.auth import INVALID_KEY, MISSING_KEY, ApiKeys
from app.service.engine_handle import EngineHandle, ServedVariant
from app.service.errors import ErrorKind, Failure, InvalidInferenceRequest, failure_of
from app.service.oip.model import MODEL_VERSION
from app.service.oip.requests import check_version
from app.service.prediction import PredictionService
from app.service.variants import describe
from app.tracing import STATE, propagation, spans

log = logging.getLogger(__name__)

ENDPOINT = "grpc_infer"  # the endpoint label of xnli_request_duration_seconds for gRPC infers
DEADLINE_MARGIN_S = 0.005  # kept from a call's deadline for the answer's way back, so the engine's deadline fires first
SERVICE_NAME = "inference.GRPCInferenceService"  # the span names' prefix, as OpenTelemetry names RPC spans
PROBES = frozenset({"ServerLive", "ServerReady", "ModelReady"})  # answers, not refusals: never counted
AUTHENTICATE = (("www-authenticate", 'Bearer realm="xnli-serve"'),)

Reply = TypeVar("Reply")


class _Refused(Exception):
    """A failure already counted where it happened (the prediction service counts its own)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class InferenceServicer:
    """The RPCs, each one call of the service layer inside :meth:`_serve`; the protocol's method names. Registered
    by :func:`rpc_handlers` from the proto's descriptor: no grpcio-generated ``*_pb2_grpc`` module (its abstract
    servicer and grpcio version check would tie the service to the grpcio that generated it)."""

    def __init__(
        self,
        engine: EngineHandle,
        service: PredictionService,
        max_pairs_per_request: int,
        api_keys: ApiKeys | None = None,
        max_calls: int | None = None,
    ) -> None:
        self.engine = engine
        self.service = service
        self.max_pairs = max_pairs_per_request
        self.keys = api_keys
        self.max_calls = max_calls  # calls at once (probes aside), as the HTTP edge bounds requests; None: unbounded
        self.calls = 0

    async def _serve(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext[object, object],
        body: Callable[[CallContext], Awaitable[Reply]],
    ) -> Reply:
        """Probes are never refused for load (as HTTP's); any other call beyond ``max_calls`` is RESOURCE_EXHAUSTED
        ``overloaded`` at once, before its message is looked at."""
        if rpc in PROBES or self.max_calls is None:
            return await self._traced(rpc, context, body)
        if self.calls >= self.max_calls:
            failure = failure_of(
                OverloadedError(f"this process is handling its limit of {self.max_calls} calls at once", 1.0)
            )
            self._count(rpc, metrics.UNKNOWN_VARIANT, failure.outcome)
            await context.abort(status.status_of(failure), failure.message, status.trailing_metadata(failure))
        self.calls += 1
        try:
            return await self._traced(rpc, context, body)
        finally:
            self.calls -= 1

    async def _traced(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext[object, object],
        body: Callable[[CallContext], Awaitable[Reply]],
    ) -> Reply:
        call = call_context(context.invocation_metadata())
        if STATE.active and rpc not in PROBES:  # tracing (issue #27): off, this costs one attribute read
            with spans.server_span(
                f"{SERVICE_NAME}/{rpc}", call.trace_carrier, {"rpc.system": "grpc", "rpc.method": rpc}
            ) as span:
                answer = propagation.traceparent(span)
                if answer is not None:  # as HTTP's traceparent response header: the call's initial metadata
                    await context.send_initial_metadata(((TRACEPARENT_KEY, answer),))
                return await self._checked(rpc, context, body, call)
        return await self._checked(rpc, context, body, call)

    async def _checked(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext[object, object],
        body: Callable[[CallContext], Awaitable[Reply]],
        call: CallContext,
    ) -> Reply:
        failure: Failure | None = None
        try:
            if self.keys is not None and not self.keys.authorized(call.authorization):
                self._count(rpc, metrics.UNKNOWN_VARIANT, Outcome.CLIENT_ERROR)
                message = MISSING_KEY if call.authorization is None else INVALID_KEY
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, message, AUTHENTICATE)
            try:
                return await body(call)
            except _Refused as refused:
                failure = failure_of(refused.error)
                if failure.kind is ErrorKind.INTERNAL:
                    log.error("internal error in %s", rpc, exc_info=refused.error)
            except Exception as error:  # every failure gets its status: none leaves as UNKNOWN
                failure = failure_of(error)
                self._count(rpc, metrics.UNKNOWN_VARIANT, failure.outcome)
                if failure.kind is ErrorKind.INTERNAL:
                    log.exception("internal error in %s", rpc)
            await context.abort(status.status_of(failure), failure.message, status.trailing_metadata(failure))
        finally:
            call.close()

    @staticmethod
    def _count(rpc: str, variant: str, outcome: Outcome) -> None:
        if rpc not in PROBES:
            metrics.REQUESTS.labels(variant, outcome).inc()

    def _resolve(self, name: str) -> ServedVariant:
        if not name:
            raise InvalidInferenceRequest("the model's name is empty; RepositoryIndex lists the names")
        return self.engine.resolve(name)

    def _model(self, name: str, version: str) -> ServedVariant:
        runtime = self._resolve(name)
        check_version(name, version or None)
        return runtime

    # -- health and metadata -------------------------------------------------------------------------------------

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ServerLiveResponse:
        async def body(call: CallContext) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=health.liveness(self.engine))

        return await self._serve("ServerLive", context, body)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ServerReadyResponse:
        async def body(call: CallContext) -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=health.readiness(self.engine).ready)

        return await self._serve("ServerReady", context, body)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ModelReadyResponse:
        async def body(call: CallContext) -> pb.ModelReadyResponse:
            runtime = self._model(request.name, request.version)
            return pb.ModelReadyResponse(ready=self.engine.variant_ready(runtime.spec.name))

        return await self._serve("ModelReady", context, body)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ServerMetadataResponse:
        async def body(call: CallContext) -> pb.ServerMetadataResponse:
            return messages.server_metadata()

        return await self._serve("ServerMetadata", context, body)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ModelMetadataResponse:
        async def body(call: CallContext) -> pb.ModelMetadataResponse:
            info = describe(self._model(request.name, request.version))
            return messages.model_metadata(info, get_backend(info.backend).platform)

        return await self._serve("ModelMetadata", context, body)

    # -- infer ---------------------------------------------------------------------------------------------------

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ModelInferResponse:
        async def body(call: CallContext) -> pb.ModelInferResponse:
            variant = metrics.UNKNOWN_VARIANT
            try:
                variant = self._resolve(request.model_name).spec.name  # labels a refusal from here on, as over HTTP
                check_version(request.model_name, request.model_version or None)
                parsed = messages.infer_request(
                    request, variant, self.max_pairs, call.routing_key, _deadline(context.time_remaining())
                )
            except Exception as error:
                self._count("ModelInfer", variant, failure_of(error).outcome)
                raise _Refused(error) from None
            if parsed.zero_shot is not None:  # issue #26: inputs text + candidate_labels
                try:
                    planned = zero_shot.plan(self.service, parsed.zero_shot)
                except Exception as error:
                    self._count("ModelInfer", variant, failure_of(error).outcome)
                    raise _Refused(error) from None
                try:
                    result = await self._predict(planned.query, context)
                except Exception as error:
                    raise _Refused(error) from None  # the service counted it
                return messages.zero_shot_infer_response(parsed, planned, result)
            assert parsed.query is not None
            try:
                result = await self._predict(parsed.query, context)
            except Exception as error:
                raise _Refused(error) from None  # the service counted it
            return messages.infer_response(parsed, result)

        return await self._serve("ModelInfer", context, body)

    async def _predict(self, query: object, context: grpc.aio.ServicerContext[object, object]) -> EngineResult:
        """The prediction in a task of its own: gRPC cancels the handler when its client cancels (or its deadline
        passes), and the prediction then ends as the service's ClientDisconnected, counted ``disconnected``."""
        gone = asyncio.Event()
        prediction = asyncio.ensure_future(self.service.predict(query, ENDPOINT, gone.wait))  # type: ignore[arg-type]
        try:
            return await asyncio.shield(prediction)
        except asyncio.CancelledError:
            gone.set()
            prediction.add_done_callback(_retrieve)
            raise

    # -- model repository ----------------------------------------------------------------------------------------

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.RepositoryIndexResponse:
        async def body(call: CallContext) -> pb.RepositoryIndexResponse:
            _check_repository(request.repository_name)
            entries = await asyncio.to_thread(self.engine.repository_index)
            return pb.RepositoryIndexResponse(
                models=[
                    _index_entry(entry)
                    for entry in entries
                    if not request.ready or entry.state is RepositoryState.READY
                ]
            )

        return await self._serve("RepositoryIndex", context, body)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.RepositoryModelLoadResponse:
        async def body(call: CallContext) -> pb.RepositoryModelLoadResponse:
            _check_repository(request.repository_name)
            overrides = sorted(request.parameters)
            if overrides:
                raise InvalidInferenceRequest(
                    f"load parameters {overrides} are not supported: the catalogue is the repository; edit the entry "
                    f"of {request.model_name!r} in it, then load again"
                )
            await self.engine.load_variant(request.model_name, min_queue_pairs=self.max_pairs)
            return pb.RepositoryModelLoadResponse()

        return await self._serve("RepositoryModelLoad", context, body)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.RepositoryModelUnloadResponse:
        async def body(call: CallContext) -> pb.RepositoryModelUnloadResponse:
            _check_repository(request.repository_name)
            _check_unload_parameters(request.parameters)
            await self.engine.unload_variant(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._serve("RepositoryModelUnload", context, body)


def rpc_handlers(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """The service's methods, each decoding its own request: gRPC's own decoding would answer a message that does not
    parse with a status of its choosing (UNKNOWN), this one answers INVALID_ARGUMENT, counted like every refusal."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        method.name: grpc.unary_unary_rpc_method_handler(
            _decoding(servicer, method.name, getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
        for method in service.methods
    }
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _decoding(
    servicer: InferenceServicer, rpc: str, request_class: type[Message]
) -> Callable[[bytes, grpc.aio.ServicerContext[object, object]], Awaitable[Message]]:
    method = getattr(servicer, rpc)

    async def handle(raw: bytes, context: grpc.aio.ServicerContext[object, object]) -> Message:
        try:
            request = request_class.FromString(raw)
        except DecodeError as error:
            failure = failure_of(InvalidInferenceRequest(f"the {rpc} request does not parse: {error}"))
            servicer._count(rpc, metrics.UNKNOWN_VARIANT, failure.outcome)
            await context.abort(status.status_of(failure), failure.message, status.trailing_metadata(failure))
        answer: Message = await method(request, context)
        return answer

    return handle


def _deadline(remaining_s: float | None) -> float | None:
    """The request's timeout from what is left of the call's deadline; none when the call has no deadline."""
    if remaining_s is None:
        return None
    timeout_s = remaining_s - DEADLINE_MARGIN_S
    if timeout_s <= 0:
        raise DeadlineExceededError(f"the call's deadline leaves {max(remaining_s, 0) * 1000:.1f} ms: too little")
    return timeout_s


def _retrieve(task: asyncio.Future[EngineResult]) -> None:
    """Read the abandoned prediction's end, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _check_repository(name: str) -> None:
    if name:
        raise InvalidInferenceRequest(
            f"repository {name!r}: there is one repository, the catalogue; leave repository_name empty"
        )


def _check_unload_parameters(parameters: Mapping[str, pb.ModelRepositoryParameter]) -> None:
    unexpected = sorted(set(parameters) - {"unload_dependents"})
    if unexpected:
        raise InvalidInferenceRequest(
            f"unknown unload parameters {unexpected}; only unload_dependents (variants have none)"
        )
    if "unload_dependents" in parameters and parameters["unload_dependents"].WhichOneof("parameter_choice") != (
        "bool_param"
    ):
        raise InvalidInferenceRequest("parameter 'unload_dependents' must be a boolean")


def _index_entry(entry: RepositoryEntry) -> pb.RepositoryIndexResponse.ModelIndex:
    return pb.RepositoryIndexResponse.ModelIndex(
        name=entry.name, version=MODEL_VERSION, state=str(entry.state), reason=entry.reason
    )

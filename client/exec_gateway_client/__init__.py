"""exec-gateway client: ``Gateway`` / ``AsyncGateway`` sessions that run Python cells, typed
errors, and the models of the server's answers. CLI: ``exec-gateway-client``; MCP server:
``exec-gateway-mcp``."""

from exec_gateway_client.async_gateway import AsyncGateway, AsyncSession
from exec_gateway_client.errors import (
    APIError,
    BadRequest,
    CapacityExceeded,
    CellError,
    ConnectionLost,
    GatewayError,
    KernelStartFailed,
    KeySessionLimit,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    QueueTimeout,
    RequestTimeout,
    ServiceUnavailable,
    SessionExists,
    SessionNotFound,
    ShuttingDown,
    TooManyRequests,
    TransportError,
    Unauthorized,
    ValidationFailed,
)
from exec_gateway_client.gateway import Gateway, Session
from exec_gateway_client.models import ErrorInfo, FileInfo, Output, Result, SessionInfo

__version__ = "0.1.0"

__all__ = [
    "APIError", "AsyncGateway", "AsyncSession", "BadRequest", "CapacityExceeded", "CellError",
    "ConnectionLost", "ErrorInfo", "FileInfo", "Gateway", "GatewayError", "KernelStartFailed",
    "KeySessionLimit", "NotFound", "Output", "PayloadTooLarge", "QueueFull", "QueueTimeout",
    "RequestTimeout",
    "Result", "ServiceUnavailable", "Session", "SessionExists", "SessionInfo",
    "SessionNotFound", "ShuttingDown", "TooManyRequests", "TransportError", "Unauthorized",
    "ValidationFailed",
]

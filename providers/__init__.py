"""providers: cloud-provider plugins (AWS, GCP) written against cws_actors' public API.

``_base`` holds the protocol, ``InstanceInfo``, the error tree and the resilience of
provider calls (deadlines, retries, a circuit breaker); ``_aws`` and ``_gcp`` implement
it with boto3 and google-cloud-compute, translating their errors at the boundary.
"""

from ._base import BreakerState as BreakerState
from ._base import CircuitBreaker as CircuitBreaker
from ._base import CircuitOpen as CircuitOpen
from ._base import CloudProvider as CloudProvider
from ._base import InstanceInfo as InstanceInfo
from ._base import InstanceNotFound as InstanceNotFound
from ._base import InstanceState as InstanceState
from ._base import ProviderAuthError as ProviderAuthError
from ._base import ProviderError as ProviderError
from ._base import ProviderNotConfigured as ProviderNotConfigured
from ._base import ProviderRequestError as ProviderRequestError
from ._base import ProviderThrottled as ProviderThrottled
from ._base import ProviderUnavailable as ProviderUnavailable
from ._base import Resilience as Resilience
from ._base import call_resiliently as call_resiliently

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpen",
    "CloudProvider",
    "InstanceInfo",
    "InstanceNotFound",
    "InstanceState",
    "ProviderAuthError",
    "ProviderError",
    "ProviderNotConfigured",
    "ProviderRequestError",
    "ProviderThrottled",
    "ProviderUnavailable",
    "Resilience",
    "call_resiliently",
]

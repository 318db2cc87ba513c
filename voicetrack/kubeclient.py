"""One way every Voicetrack process gets its Kubernetes API client (the official client)."""

from __future__ import annotations

from kubernetes import client, config

from voicetrack.errors import InvalidInputError


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An API client from `kubeconfig`, else the in-cluster ServiceAccount, else
    KUBECONFIG / ~/.kube/config (what the local node agent gives its pods).

    Raises InvalidInputError when none of them is usable."""
    try:
        if kubeconfig:
            return config.new_client_from_config(config_file=kubeconfig)
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            return config.new_client_from_config()
    except (config.ConfigException, OSError) as err:
        raise InvalidInputError(f"no usable Kubernetes configuration (not in a cluster, "
                                f"and KUBECONFIG / ~/.kube/config: {err})") from err

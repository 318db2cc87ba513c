"""The node agent: plays the kubelet for the local cluster by running each pod's containers
as local processes.

What it does (the kubelet behaviour it follows is cited from kubernetes.io/docs/concepts/
workloads/pods/pod-lifecycle/ and the kubelet's ``pkg/kubelet/kubelet_pods.go``):

* registers Node :data:`voicetrack_local.cluster.NODE_NAME` (Ready, capacity from this
  machine, ``InternalIP 127.0.0.1``, ``daemonEndpoints.kubeletEndpoint.Port``) and renews its
  Lease in ``kube-node-lease`` every 10 s (the node controller marks a node Unknown after
  ``--node-monitor-grace-period``, 50 s, without a renewal it saw), retrying a failed renewal
  within seconds; every heartbeat also reads the Node back and re-posts its status at once
  when it is not Ready (as the kubelet does every ``nodeStatusUpdateFrequency``), else every
  60 s;
* lists and watches the pods bound to it (``spec.nodeName``), re-listing after watch
  time-outs, ``410 Gone`` and connection errors; one worker thread per pod, so no pod
  blocks another;
* per pod: a private directory ``<state>/agent/pods/<ns>_<name>_<uid>/`` (cwd of every
  container; ``volumes/<name>/`` for emptyDir, configMap, secret, projected and downwardAPI
  volumes, a symlink to the bound PersistentVolume's hostPath/local directory for a
  persistentVolumeClaim volume (a container mounting one runs in a private mount namespace
  with it bind-mounted at its ``mountPath``, see :mod:`.volumes`); ``TMPDIR`` is the
  emptyDir mounted at ``/tmp``, else the first emptyDir the container mounts, else
  ``tmp/``), a kubeconfig holding a TokenRequest token bound to the pod for its
  ServiceAccount (``KUBECONFIG``), env from ``value`` (with ``$(VAR)``
  expansion), ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``, ``resourceFieldRef`` and
  ``envFrom``; ``VOICETRACK_TERMINATION_LOG`` names the host file standing for the
  container's ``terminationMessagePath`` (``termination/<container>``, emptied before every
  run);  ``PATH`` starts with the directory of this agent's Python (the venv's
  ``bin``, where the ``voicetrack-*`` console scripts are).  Init containers run in order,
  then all containers at once; command + args are run (the image is ignored; a container
  without ``command`` waits with ``CreateContainerError``), stdout and stderr go to
  ``logs/<container>/<restartCount>.log``;
* status: phase Pending → Running → Succeeded/Failed, containerStatuses (waiting /
  running / terminated with exitCode, reason ``Completed``/``Error``/``StartError``,
  restartCount, lastState; the termination message from that file, or with
  ``terminationMessagePolicy: FallbackToLogsOnError`` after a failure the log's tail),
  conditions (PodReadyToStartContainers, Initialized,
  ContainersReady, Ready; readiness probes are not run: a running container is ready);
* restartPolicy Always/OnFailure/Never with the kubelet's back-off (10 s doubling to 5 min),
  ``activeDeadlineSeconds`` (Failed, reason DeadlineExceeded), graceful deletion: SIGTERM
  to each container's main process, SIGKILL to its process group after the pod's
  ``deletionGracePeriodSeconds``, terminal phase reported, then the final delete
  (``gracePeriodSeconds=0`` with a uid precondition);
* serves ``GET /containerLogs/<ns>/<pod>/<container>`` (``follow``, ``tailLines``,
  ``previous``, ``limitBytes``) over HTTPS with a CA-signed cert, requiring a client
  certificate from the cluster CA (the apiserver's kubelet client cert), so ``kubectl logs``
  works.

Not done (documented limits): images, probes, exec/attach/port-forward, resource limits,
hostNetwork isolation, service environment variables (``KUBERNETES_SERVICE_HOST`` is *not*
set, so in-cluster clients fall back to ``KUBECONFIG``), volumes other than the above
(other than a claim's, a ``mountPath`` is never created; programs find their files through
cwd/TMPDIR).

The agent talks to the API with the admin kubeconfig of the state directory (a node
identity with NodeRestriction is not needed for a single-user local cluster).
Run: ``python -m voicetrack_local.nodeagent --state-dir DIR`` (``voicetrack local up`` does).

Modules: :mod:`.agent` (the process, the pod watch), :mod:`.node` (Node and Lease),
:mod:`.worker` (one thread per pod), :mod:`.container` (a container's process and state),
:mod:`.sandbox` (a pod's directory, token, volumes), pure :mod:`.podspec` (environment),
:mod:`.volumes` (volume plans) and :mod:`.podstatus` (phase, container statuses, termination
messages), :mod:`.kube` (API access), :mod:`.logs` (the kubelet endpoint).
"""

from voicetrack_local.nodeagent.agent import NodeAgent, main
from voicetrack_local.nodeagent.container import Container
from voicetrack_local.nodeagent.kube import Kube, now_iso, now_micro, parse_time
from voicetrack_local.nodeagent.podspec import (
    ConfigError,
    container_env,
    expand,
    field_value,
    quantity,
)
from voicetrack_local.nodeagent.podstatus import pod_phase, pod_status, termination_message
from voicetrack_local.nodeagent.volumes import plan_volumes
from voicetrack_local.nodeagent.worker import PodWorker

__all__ = [
    "ConfigError",
    "Container",
    "Kube",
    "NodeAgent",
    "PodWorker",
    "container_env",
    "expand",
    "field_value",
    "main",
    "now_iso",
    "now_micro",
    "parse_time",
    "plan_volumes",
    "pod_phase",
    "pod_status",
    "quantity",
    "termination_message",
]

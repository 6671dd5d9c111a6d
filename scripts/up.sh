#!/usr/bin/env bash
# Starts the demo in the background and returns once the device's Node is Ready.
set -euo pipefail
state=.local
mkdir -p "$state"
if [ -f "$state/demo.pid" ] && kill -0 "$(cat "$state/demo.pid")" 2>/dev/null; then
  echo "already up (pid $(cat "$state/demo.pid")); 'make down' first"
  exit 0
fi
rm -f "$state/kubeconfig"
demo="$1"
transport="${2:-grpc}"
setsid nohup "$demo" --state-dir "$state" --transport "$transport" > "$state/demo.log" 2>&1 < /dev/null &
echo $! > "$state/demo.pid"
for _ in $(seq 1 600); do
  if [ -f "$state/kubeconfig" ]; then
    cat <<TXT
Up: a Kubernetes v1.37 control plane, aranya, and the device 'demo-device' (its Node is Ready),
running the sample Deployment hello-edge (deploy/sample-deployment.yaml) in Docker.
$(grep -m1 '^ready: ' "$state/demo.log" | sed 's/^ready: //')

Try:
  .local/bin/kubectl --kubeconfig .local/kubeconfig get nodes -o wide
  .local/bin/kubectl --kubeconfig .local/kubeconfig get edgedevices
  .local/bin/kubectl --kubeconfig .local/kubeconfig describe node demo-device
  .local/bin/kubectl --kubeconfig .local/kubeconfig get pods -o wide
  docker ps --filter label=io.arhat.device=demo-device
Logs: .local/logs/{aranya,arhat}.log, .local/testbed/logs/, .local/demo.log
  (over MQTT also .local/mosquitto/{mosquitto.conf,mosquitto.log})
Stop: make down
TXT
    exit 0
  fi
  if ! kill -0 "$(cat "$state/demo.pid")" 2>/dev/null; then
    echo "the demo exited before the device was Ready:" >&2
    tail -n 40 "$state/demo.log" >&2
    exit 1
  fi
  sleep 1
done
echo "timed out waiting for the demo; see $state/demo.log" >&2
exit 1

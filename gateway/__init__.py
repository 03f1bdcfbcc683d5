"""The HTTP gateway: the Comfy API v2 and the old endpoint's RunPod-shaped API in front of the cluster.

Stateless: every job, index entry and asset lives in the cluster's Redis and object storage, so any
number of gateways may serve the same jobs behind one load balancer.
"""

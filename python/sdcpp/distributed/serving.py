"""The HTTP server of `sdcpp serve` (A1111 + OpenAI APIs) as a Ray Serve deployment: `num_replicas` processes,
each loading the model once and running its jobs one at a time; Ray Serve's proxy spreads requests over them."""

from __future__ import annotations


def deployment(model, *, num_replicas: int = 1, threads_per_replica: int = 1, token: str | None = None,
               **load):
    """A bound Ray Serve application (pass it to `ray.serve.run`)."""
    from ray import serve

    from ..server import create_app

    holder = {}

    def app_factory():
        from ..pipeline import Model

        holder["app"] = create_app(Model(model, n_threads=threads_per_replica, progress=False, **load),
                                   path=str(model), token=token)
        return holder["app"]

    @serve.deployment(num_replicas=num_replicas, ray_actor_options={"num_cpus": threads_per_replica})
    @serve.ingress(app_factory)
    class SdcppServer:
        pass

    return SdcppServer.bind()


def serve(model, *, num_replicas: int = 1, threads_per_replica: int = 1, host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None, blocking: bool = True, **load):
    """Run the deployment on the current (or a local) Ray cluster, on http://host:port (Ray Serve's proxy). With
    `blocking`, until Ctrl-C; otherwise returns the handle (stop it with `ray.serve.shutdown()`)."""
    import time

    import ray
    from ray import serve as ray_serve

    if not ray.is_initialized():
        ray.init(num_cpus=num_replicas * threads_per_replica, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    ray_serve.start(http_options={"host": host, "port": port})
    handle = ray_serve.run(deployment(model, num_replicas=num_replicas, threads_per_replica=threads_per_replica,
                                      token=token, **load), route_prefix="/")
    if not blocking:
        return handle
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        ray_serve.shutdown()
    return None

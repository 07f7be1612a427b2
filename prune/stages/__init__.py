"""Pipeline stages that outgrew a method of `Pipeline`: each is `build(pipeline, out_dir) -> info`."""

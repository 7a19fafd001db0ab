"""HTTP routers, one module per resource: `jobs`, `gallery`, `models`, `info` (native, `/api/v1`) and
`sdapi`, `sdapi_info` (AUTOMATIC1111's `/sdapi/v1`, with its shapes in `sdapi_schemas` and the mapping to
Recipes in `sdapi_adapter`). Routes only parse, call a service from `brushwork.serve.deps`, and shape the answer."""

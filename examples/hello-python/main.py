"""A tiny fnmesh function: greets whoever is named in the event."""

count = 0  # module state survives between warm invocations of one version


def handle(event, context):
    global count
    count += 1
    name = (event or {}).get("name", "world")
    print(f"greeting {name} (invocation {context.invocation_id})")
    return {"message": f"Hello, {name}!", "warm_invocations": count}

// A tiny fnmesh function for Node.js: sync or async handlers both work.
exports.handler = async (event, context) => {
  const name = (event && event.name) || "world";
  console.log(`greeting ${name} (invocation ${context.invocationId})`);
  return { message: `Hello, ${name}!`, runtime: process.version };
};

// node-web: answers HTTP on $PORT; the Procfile-less app gets "web: npm start" from the buildpack.
const http = require("http");
const escapeHtml = require("escape-html");

const port = Number(process.env.PORT);
http
  .createServer((req, res) => {
    res.setHeader("Content-Type", "text/plain");
    res.end(`node-web ok: ${escapeHtml("<node>")} on ${process.version}\n`);
  })
  .listen(port, "0.0.0.0", () => console.log(`node-web on port ${port}`));

'use strict';

// The sample app of app-executor: prints a line, and when run by the executor (which mounts a
// writable /output) writes the run's result and a metric there.
const fs = require('fs');
const path = require('path');
const { greet } = require('greeting');

const greeting = greet(process.env.APP_ID ? `app ${process.env.APP_ID}` : 'world');
console.log(greeting);

const output = '/output';
if (fs.existsSync(output)) {
  fs.writeFileSync(path.join(output, 'result.json'), JSON.stringify({ greeting }));
  fs.writeFileSync(path.join(output, 'metrics.json'), JSON.stringify({ answer: 42 }));
}

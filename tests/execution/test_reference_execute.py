"""The execute() examples of the Sessions reference page, run as written (inside async defs) on real models.

The "Complete Example" hooks Ollama and OpenAI; here they are the suite's loopback Ollama-API server and
llama_cpp.server, which is the only change besides `from oblix_nb import ...`.
"""
from __future__ import annotations

import builtins

import pytest

from oblix_nb import ConnectivityAgent, ModelType, OblixClient, ResourceMonitor

pytestmark = pytest.mark.server


@pytest.fixture
async def client(tmp_path, monkeypatch):
    monkeypatch.setattr(builtins, "input", lambda prompt="": "exit")  # the chat loop's user leaves at once
    c = OblixClient(home=tmp_path)
    c.default_max_tokens = 32  # the examples pass none; keep replies short so the suite stays fast
    await c.hook_model(ModelType.LLAMACPP, "smollm2-135m")
    yield c
    await c.shutdown()


async def test_single_message_in_session(client, capsys):
    # Create a session first
    session_id = await client.create_session("Technical Support Chat")

    # Send a message in this session
    response = await client.execute(
        prompt="I'm having trouble installing the software",
        session_id=session_id
    )
    print(f"AI: {response['response']}")

    # Continue the conversation in the same session
    response = await client.execute(
        prompt="I'm using Windows 11",
        session_id=session_id
    )
    print(f"AI: {response['response']}")

    out = capsys.readouterr().out
    assert out.count("AI: ") == 2
    messages = client.load_session(session_id)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == "I'm using Windows 11"
    assert response["metrics"]["context"]["messages"] == 3  # the first exchange went to the model too


async def test_interactive_chat_with_session(client, capsys):
    # Start an interactive chat session with streaming
    result = await client.execute(
        prompt="I need help with installation problems",
        chat=True,  # Enables interactive chat mode
        stream=True  # Streams the responses (default)
    )
    # The chat session ID is returned when the chat ends
    print(f"Chat ended. Session ID: {result['session_id']}")

    assert f"Chat ended. Session ID: {result['session_id']}" in capsys.readouterr().out
    assert len(client.load_session(result["session_id"])["messages"]) == 2


async def test_resume_existing_session_with_chat(client):
    existing_session_id = await client.create_session("earlier")
    client.append_message(existing_session_id, "user", "We talked about installers.")
    # Resume an existing session with interactive chat
    result = await client.execute(
        prompt="Let's continue our previous discussion",
        session_id=existing_session_id,
        chat=True  # Enables interactive chat mode
    )
    assert result == {"session_id": existing_session_id}
    assert len(client.load_session(existing_session_id)["messages"]) == 3


async def test_complete_example(tmp_path, monkeypatch, ollama_server, openai_server, capsys):
    monkeypatch.setattr(builtins, "input", lambda prompt="": "exit")
    monkeypatch.chdir(tmp_path)

    async def main():
        # Initialize the client
        client = OblixClient(home=tmp_path / "home")

        # Hook models for orchestration
        await client.hook_model(
            model_type=ModelType.OLLAMA,
            model_name=ollama_server.model,
            endpoint=ollama_server.url,
        )

        await client.hook_model(
            model_type=ModelType.OPENAI,
            model_name=openai_server.model,
            api_key="your_openai_api_key",
            base_url=openai_server.base_url,
        )

        # Add monitoring agents
        client.hook_agent(ResourceMonitor())
        client.hook_agent(ConnectivityAgent())

        # Create a new session with metadata
        session_id = await client.create_session(
            title="Product Demo Session",
            metadata={"category": "demo", "customer": "Acme Inc"}
        )
        client.use_session(session_id)

        try:
            # Send messages in the session
            print("Starting conversation...")

            # First message with session context
            response = await client.execute(
                prompt="Tell me about Oblix's features",
                session_id=session_id,
                stream=True,  # Stream the response (default)
                max_tokens=24,
            )
            print(f"\nResponse from {response['model_id']}")

            # Follow-up message (uses session context)
            response = await client.execute(
                prompt="How does orchestration work?",
                session_id=session_id,
                max_tokens=24,
            )

            # Start an interactive chat continuing this conversation
            print("\nStarting interactive chat...")
            result = await client.execute(
                prompt="Tell me more about the connectivity features",
                session_id=session_id,
                chat=True,  # Enable interactive chat mode
                max_tokens=24,
            )
            print(f"Chat ended. Session ID: {result['session_id']}")

            # Export the session
            await client.export_session(session_id, "demo_session.json")
            print("\nSession exported to demo_session.json")

        finally:
            # Clean up resources
            await client.shutdown()
        return client, session_id

    client, session_id = await main()
    out = capsys.readouterr().out
    assert "Response from ollama:" in out or "Response from openai:" in out
    assert f"Chat ended. Session ID: {session_id}" in out
    exported = (tmp_path / "demo_session.json").read_text()
    assert "your_openai_api_key" not in exported
    session = client.load_session(session_id)
    assert len(session["messages"]) == 6 and session["metadata"]["customer"] == "Acme Inc"
